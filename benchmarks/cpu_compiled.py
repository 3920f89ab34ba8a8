"""Compiled vs eager on this CPU, side by side in one run: OpenVINO bf16 and int8 bundles, the ONNX
Runtime fp32 bundle, the torch backend (bf16 autocast) and the plain PyTorch loop.

    python benchmarks/cpu_compiled.py                 # the full run (1,000 images for accuracy)
    python benchmarks/cpu_compiled.py --quick --num 200 --tag under-load

Cases: tiny-animals at batch 1 and 32 with N = 16, B = 6 and N = 32, B = 8; tiny-scenes at batch 8
(its N = 32, B = 8). Each engine runs in its own subprocess (one process per engine, as a user
would run it), the rounds are interleaved (every engine does one timed run of a case, in a rotating
order, before any does its next), and the tables show medians over rounds. Before the rounds each
engine has one untimed run of every case. The machine's load (os.getloadavg) is recorded before,
during and after.

Per case and engine: images/s end to end (loop + decode); the cost model's ideal time
B * base + (N - B) * shortcut + decode (the model calls alone: what speed.py's N / (B + (N - B) c)
assumes) over the measured time, as % of ideal; the component times (base, shortcut, sampling
kernel, decode, at the case's batch, CFG rows included) and what is left of the loop beside
them (Python overhead and copies); and the base step's share of this CPU's bf16 matmul peak
(a 2048 x 2048 bf16 torch matmul on the same threads; the base's FLOPs counted by torch's
FlopCounterMode).

Accuracy against fp32 (the ORT fp32 bundle's tokens, same seeds): share of identical tokens and
FD (tiny-animals, N = 16, B = 6, --num images scored by the evaluation classifier against the
validation split).

Bundles are built once into --bundle-dir (NAME-BACKEND-PRECISION.plan) and reused.
Writes JSON and a Markdown table to benchmarks/results/cpu_compiled/TAG.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ENGINES = ("openvino-bf16", "openvino-int8", "ort-fp32", "torch-bf16", "plain")
BUNDLED = {"openvino-bf16": ("openvino", "bf16"), "openvino-int8": ("openvino", "int8"), "ort-fp32": ("ort", "fp32")}
CASES = [("tiny-animals", 1, 16, 6), ("tiny-animals", 32, 16, 6), ("tiny-animals", 1, 32, 8),
         ("tiny-animals", 32, 32, 8), ("tiny-scenes", 8, 32, 8)]
QUICK_CASES = [("tiny-animals", 1, 16, 6), ("tiny-animals", 32, 16, 6), ("tiny-scenes", 8, 32, 8)]
ROOT = Path(__file__).resolve().parent.parent


# ---- the worker: one engine in its own process, cases on request ----

def _pipeline(engine: str, model: str, bundle_dir: Path):
    from migm.runtime import Pipeline

    if engine in BUNDLED:
        backend, precision = BUNDLED[engine]
        return Pipeline.from_bundle(bundle_dir / f"{model}-{backend}-{precision}.plan", backend=backend)
    return Pipeline.from_checkpoints(model=model, precision="bf16")  # torch-bf16 and plain run the same modules


def _case_fn(engine: str, pipe, batch: int, steps: int, budget: int):
    from migm.evaluation.plain_loop import plain_generate

    cond = pipe.example_conditions(batch)
    sampler = pipe.sampler(steps=steps)
    if engine == "plain":
        base, sc = pipe.backend.base_model, pipe.backend.shortcut_model
        return lambda: pipe.decode(plain_generate(base, cond, sampler, budget=budget, shortcut=sc,
                                                  generator=torch.Generator().manual_seed(0)))
    return lambda: pipe.decode(pipe.generate_tokens(cond=cond, sampler=sampler, budget=budget, seed=0,
                                                    batch_size=batch))


def worker(engine: str, bundle_dir: Path, threads: int) -> None:
    """Answer one JSON line per request line: {"case": [model, batch, N, B], "components": bool}."""
    from migm.evaluation.speed import components

    torch.set_num_threads(threads)
    pipes, fns = {}, {}
    print(json.dumps({"ready": engine}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        model, batch, steps, budget = req["case"]
        if model not in pipes:
            pipes[model] = _pipeline(engine, model, bundle_dir)
        pipe = pipes[model]
        key = tuple(req["case"])
        if key not in fns:
            fns[key] = _case_fn(engine, pipe, batch, steps, budget)
        t = time.perf_counter()
        with torch.no_grad():
            fns[key]()
        out = {"ms": 1000 * (time.perf_counter() - t)}
        if req.get("components") and engine != "plain":
            out["components"] = components(pipe, batch, steps, repeats=1, warmup=0)
        if hasattr(pipe.backend, "inference_precision"):
            out["inference_precision"] = pipe.backend.inference_precision
        print(json.dumps(out), flush=True)


class Worker:
    def __init__(self, engine: str, args):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.engine = engine
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", engine, "--bundle-dir",
                                      str(args.bundle_dir), "--threads", str(args.threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def ready(self) -> None:
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.engine} worker ended (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self, case, components: bool = False) -> dict:
        self.proc.stdin.write(json.dumps({"case": list(case), "components": components}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# ---- what the main process measures ----

def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """bf16 matmul FLOP/s on `threads` threads (the median of `repeats` calls)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def base_flops(model: str, rows: int) -> float:
    """FLOPs of one base call on `rows` rows (torch's FlopCounterMode: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    from migm.runtime import Pipeline

    pipe = Pipeline.from_checkpoints(model=model, precision="fp32")
    s = pipe.spec
    tokens = torch.full((rows, s.num_tokens), s.mask_id)
    cond = pipe.example_conditions(rows)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.backend.base(tokens, cond)
    return float(counter.get_total_flops())


def accuracy(args, engines: list[str]) -> list[dict]:
    """Tokens and FD of each engine at N = 16, B = 6 against the ORT fp32 bundle's (same seed)."""
    from migm import assets
    from migm.data.animals import load_animals
    from migm.evaluation.metrics import Evaluator
    from migm.models.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    evaluate = Evaluator(load_checkpoint(assets.CLASSIFIER), load_animals("val").images)
    labels = [i % 10 for i in range(args.num)]
    rows, ref = [], None
    for engine in ["ort-fp32"] + [e for e in engines if e not in ("ort-fp32", "plain")]:
        pipe = _pipeline(engine, "tiny-animals", args.bundle_dir)
        t = time.perf_counter()
        tokens = pipe.generate_tokens(labels, steps=16, budget=6, seed=0, batch_size=100)
        score = evaluate(pipe.decode(tokens), torch.tensor(labels))
        ref = tokens if ref is None else ref
        rows.append({"engine": engine, "num": args.num, "steps": 16, "budget": 6, "fd": score["fd"],
                     "class_acc": score["class_acc"], "token_agreement_vs_fp32": float((tokens == ref).float().mean()),
                     "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)
    fd32 = rows[0]["fd"]
    for r in rows:
        r["fd_minus_fp32"] = r["fd"] - fd32
    return rows


def ensure_bundles(args, engines, models) -> None:
    from migm import assets as shipped
    from migm.engines.build import BuildSettings, build_bundle

    for model in models:
        d = shipped.model_dir(model)
        for engine in engines:
            if engine not in BUNDLED:
                continue
            backend, precision = BUNDLED[engine]
            out = args.bundle_dir / f"{model}-{backend}-{precision}.plan"
            if (out / "manifest.json").exists():
                continue
            print(f"building {out} (once)", flush=True)
            build_bundle(out, BuildSettings(precision=precision, backend=backend), d / "base", d / "vq",
                         d / "shortcut", progress=lambda m: None)


def summarize(rows: list[dict], peak: float) -> list[dict]:
    """Medians over rounds per (engine, case), with the cost model's ideal and the peak share."""
    out = []
    for key in dict.fromkeys((r["engine"], tuple(r["case"])) for r in rows):
        mine = [r for r in rows if (r["engine"], tuple(r["case"])) == key]
        engine, (model, batch, steps, budget) = key
        ms = statistics.median(r["ms"] for r in mine)
        row = {"engine": engine, "model": model, "batch": batch, "steps": steps, "budget": budget, "ms": ms,
               "images_per_s": 1000 * batch / ms, "rounds": len(mine)}
        comps = [r["components"] for r in mine if r.get("components")]
        if comps:
            c = {k: statistics.median(x[k] for x in comps) for k in ("base", "shortcut", "kernel", "decode")}
            ideal = budget * c["base"] + (steps - budget) * c["shortcut"] + c["decode"]
            calls = budget * c["base"] + (steps - budget) * c["shortcut"] + steps * c["kernel"] + c["decode"]
            row.update({f"{k}_ms": v for k, v in c.items()})
            row.update({"ideal_ms": ideal, "pct_of_ideal": 100 * ideal / ms,
                        "overhead_ms": ms - calls, "overhead_share": (ms - calls) / ms})
            flops = mine[0].get("base_flops")
            if flops:
                row["base_tflops"] = flops / c["base"] / 1e9
                row["base_pct_of_peak"] = 100 * flops / (c["base"] / 1000) / peak
        if mine[0].get("inference_precision"):
            row["inference_precision"] = mine[0]["inference_precision"]
        out.append(row)
    order = {e: i for i, e in enumerate(ENGINES)}
    return sorted(out, key=lambda r: (r["model"], r["steps"], r["budget"], r["batch"], order.get(r["engine"], 99)))


def targets(summary: list[dict], acc: list[dict]) -> list[dict]:
    """The issue's targets, measured: met or not, with the numbers."""
    def ips(engine, model, batch, steps, budget):
        return next((r["images_per_s"] for r in summary if (r["engine"], r["model"], r["batch"], r["steps"],
                                                           r["budget"]) == (engine, model, batch, steps, budget)), None)

    out = []
    for batch in (32, 1):
        case = ("tiny-animals", batch, 16, 6)
        best = max((e for e in ("openvino-bf16", "openvino-int8") if ips(e, *case)), key=lambda e: ips(e, *case),
                   default=None)
        if best is None:
            continue
        wants = [("ort-fp32", 3.0), ("torch-bf16", 1.5), ("plain", 1.5)] if batch == 32 else [("torch-bf16", 2.0)]
        for other, want in wants:
            if ips(other, *case):
                ratio = ips(best, *case) / ips(other, *case)
                out.append({"target": f"{best} >= {want}x {other}, batch {batch}, N=16 B=6", "measured": ratio,
                            "met": ratio >= want})
    share = [r for r in summary if r["engine"].startswith("openvino") and r["model"] == "tiny-animals"
             and r["batch"] == 32 and r.get("base_pct_of_peak")]
    if share:
        top = max(share, key=lambda r: r["base_pct_of_peak"])
        out.append({"target": f"base step >= 50% of the bf16 matmul peak ({top['engine']}, batch 32)",
                    "measured": top["base_pct_of_peak"], "met": top["base_pct_of_peak"] >= 50})
    bf16 = next((r for r in acc if r["engine"] == "openvino-bf16"), None)
    if bf16:
        out.append({"target": f"bf16 FD within 1.0 of fp32 ({bf16['num']} images)", "measured": bf16["fd_minus_fp32"],
                    "met": abs(bf16["fd_minus_fp32"]) <= 1.0})
        out.append({"target": "bf16 token agreement >= 97%", "measured": 100 * bf16["token_agreement_vs_fp32"],
                    "met": bf16["token_agreement_vs_fp32"] >= 0.97})
    return out


def markdown(doc: dict) -> str:
    def f(v, fmt=".3g"):
        return "-" if v is None else format(v, fmt)

    lines = [f"load (1-min avg) before {doc['load_before'][0]:.2f}, after {doc['load_after'][0]:.2f}; "
             f"{doc['threads']} threads; bf16 matmul peak {doc['peak_tflops']:.2f} TFLOP/s; {doc['rounds']} rounds",
             "", "| model | batch | N | B | engine | images/s | ms | % of ideal | base ms | shortcut ms | kernel ms | "
             "decode ms | overhead ms | base % of peak |", "|" + "---|" * 14]
    for r in doc["summary"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps']} | {r['budget']} | {r['engine']} | "
                     f"{f(r['images_per_s'])} | {f(r['ms'], '.1f')} | {f(r.get('pct_of_ideal'), '.0f')} | "
                     f"{f(r.get('base_ms'))} | {f(r.get('shortcut_ms'))} | {f(r.get('kernel_ms'))} | "
                     f"{f(r.get('decode_ms'))} | {f(r.get('overhead_ms'), '.1f')} | "
                     f"{f(r.get('base_pct_of_peak'), '.0f')} |")
    if doc["accuracy"]:
        lines += ["", "| engine | images | FD | FD - fp32 | class acc | tokens identical to fp32 |",
                  "|---|---|---|---|---|---|"]
        for r in doc["accuracy"]:
            lines.append(f"| {r['engine']} | {r['num']} | {r['fd']:.2f} | {r['fd_minus_fp32']:+.2f} | "
                         f"{r['class_acc']:.3f} | {100 * r['token_agreement_vs_fp32']:.1f}% |")
    if doc["targets"]:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for t in doc["targets"]:
            lines.append(f"| {t['target']} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="Fewer cases (N=16 B=6 at batch 1 and 32, scenes at 8), "
                                                         "2 rounds.")
    ap.add_argument("--rounds", type=int, default=None, help="Timed rounds per engine and case [5; quick: 2].")
    ap.add_argument("--num", type=int, default=1000, help="Images for the accuracy rows (0: none).")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--models", default="tiny-animals,tiny-scenes")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--bundle-dir", type=Path, default=None,
                    help="Where the bundles are built once and reused [$MIGM_CACHE/bench-cpu-compiled].")
    ap.add_argument("--tag", default=None, help="Output name [quiet or under-load, from the load before].")
    args = ap.parse_args()
    if args.bundle_dir is None:
        from migm.runtime.cache import cache_dir

        args.bundle_dir = cache_dir() / "bench-cpu-compiled"
    if args.worker:
        return worker(args.worker, args.bundle_dir, args.threads)

    engines = [e for e in args.engines.split(",") if e]
    cases = [c for c in (QUICK_CASES if args.quick else CASES) if c[0] in args.models.split(",")]
    rounds = args.rounds or (2 if args.quick else 5)
    args.bundle_dir.mkdir(parents=True, exist_ok=True)
    ensure_bundles(args, engines, sorted({c[0] for c in cases}))
    load_before = os.getloadavg()
    peak_before = matmul_peak(args.threads)
    flops = {c: base_flops(c[0], 2 * c[1]) for c in cases}  # guidance doubles the rows
    print(f"load {load_before}, bf16 matmul peak {peak_before / 1e12:.2f} TFLOP/s", flush=True)
    workers = {e: Worker(e, args) for e in engines}  # started together: each imports torch, migm, its runtime
    for w in workers.values():
        w.ready()
    for case in cases:  # one untimed run per engine and case (compilation, allocation, first touches)
        for w in workers.values():
            w.run(case)
    rows, loads = [], []
    for i in range(rounds):
        loads.append(os.getloadavg())
        for case in cases:
            order = engines[i % len(engines):] + engines[:i % len(engines)]  # rotate who goes first
            for e in order:
                r = workers[e].run(case, components=True)
                rows.append({"engine": e, "case": list(case), "round": i, "base_flops": flops[case], **r})
                print(f"round {i} {case} {e}: {r['ms']:.1f} ms", flush=True)
    for w in workers.values():
        w.close()
    peak = max(peak_before, matmul_peak(args.threads))
    acc = accuracy(args, engines) if args.num else []
    load_after = os.getloadavg()
    summary = summarize(rows, peak)
    doc = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
           "load_before": load_before, "load_during": loads, "load_after": load_after, "peak_tflops": peak / 1e12,
           "rounds": rounds, "cases": cases, "cpu": _cpu(), "torch": torch.__version__, "summary": summary,
           "accuracy": acc, "targets": targets(summary, acc), "rows": rows}
    tag = args.tag or ("quiet" if load_before[0] < 1.5 else "under-load")
    out = ROOT / "benchmarks" / "results" / "cpu_compiled" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    table = markdown(doc)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
