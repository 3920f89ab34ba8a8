"""TensorRT engines: the build table (any machine) and, on a GPU, tokens and speed against torch.

    python benchmarks/trt_gpu.py                  # on the GPU machine: build, agree, speed (one short run)
    python benchmarks/trt_gpu.py --dry-run        # on a CPU: every build for real, the GPU part planned

build   a `--backend trt` bundle (migm-export's build_bundle) of each model at each precision
        (fp32, fp16, int8, best) with each TensorRT flavour: one row per component: builds or
        fails (the one-line error, which names the node), build seconds, engine size. Plus the
        INT8 shortcut as migm quantized it before (ONNX Runtime's default INT32 bias Q/DQ), to
        show the failure it had. A flavour that cannot build here is a row saying why.
        Models: the shipped tiny-animals and tiny-scenes, and maskgit-imagenet512 with random
        weights (--imagenet-depth blocks; fp32 and fp16 only: no calibration of random weights).
agree   (GPU) the trt backend's tokens against the torch backend's (fp32, no CUDA graphs: the same
        random stream) for the same seed: share of identical tokens (fp32 must reach 0.99), and
        for tiny-animals FD / class accuracy of both against the validation split. A bundle whose
        engines cannot run on this GPU (e.g. TensorRT for RTX on a 9.0 GPU) is a row with the message.
agree   (dry run, CPU) the torch side only, on --dry-num images: what the comparison is made against
speed   (GPU) trt against the torch backend with CUDA graphs, batch 1 and 32, vanilla N and the
        shortcut at B: images/s, ms/image (migm.evaluation.speed.measure)

Writes build.json/.md, agree.json/.md and speed.json/.md under --out (benchmarks/results/trt/).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from migm import assets
from migm.data.animals import has_animals, load_animals
from migm.engines import refit, trt
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import verify_bundle
from migm.errors import MigmError
from migm.evaluation.metrics import Evaluator
from migm.evaluation.speed import SpeedSettings, measure
from migm.export.calibration import load_calibration, shortcut_feeds
from migm.export.int8 import head_matmuls
from migm.export.onnx import components, export_component, fold_constants, io_spec
from migm.families.presets import random_models
from migm.models.checkpoint import load_checkpoint, load_shortcut, save_checkpoint
from migm.runtime import Pipeline

SHIPPED = ("tiny-animals", "tiny-scenes")
IMAGENET = "maskgit-imagenet512"
PRECISIONS = ("fp32", "fp16", "int8", "best")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="No GPU: build and check everything, plan the GPU runs.")
    ap.add_argument("--sections", default="build,agree,speed")
    ap.add_argument("--models", default=f"{','.join(SHIPPED)},{IMAGENET}")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--flavours", default=",".join(trt.FLAVOURS), help="TensorRT flavours to build with.")
    ap.add_argument("--imagenet-depth", type=int, default=None, help="maskgit-imagenet512 blocks (default: all 24).")
    ap.add_argument("--num", type=int, default=1000, help="Images per agreement row (GPU).")
    ap.add_argument("--dry-num", type=int, default=8, help="Images for the torch side in a dry run.")
    ap.add_argument("--steps", type=int, default=16, help="Sampling steps N for the agreement rows.")
    ap.add_argument("--budget", type=int, default=6, help="Base-model steps B for the agreement rows.")
    ap.add_argument("--speed-steps", type=int, default=32)
    ap.add_argument("--speed-budget", type=int, default=8)
    ap.add_argument("--batches", default="1,32", help="Batch sizes for the speed rows.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=None, help="Where bundles are built (default: a temporary directory).")
    ap.add_argument("--out", default="benchmarks/results/trt")
    args = ap.parse_args(argv)
    args.sections = _choices(args.sections, ("build", "agree", "speed"), "--sections")
    args.models = _choices(args.models, (*SHIPPED, IMAGENET), "--models")
    args.precisions = _choices(args.precisions, PRECISIONS, "--precisions")
    args.flavours = _choices(args.flavours, trt.FLAVOURS, "--flavours")
    args.batches = [int(b) for b in args.batches.split(",")]
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: run with --dry-run (builds and checks only)")
    return args


def _choices(value: str, allowed: tuple, name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"{name}: {', '.join(bad) or 'nothing given'}; choose from {', '.join(allowed)}")
    return items


def model_checkpoints(model: str, work: Path, depth: int | None) -> tuple[Path, Path, Path]:
    """(base, vq, shortcut) checkpoint paths: the shipped ones, or random weights saved once."""
    if model in SHIPPED:
        d = assets.model_dir(model)
        return d / "base", d / "vq", d / "shortcut"
    root = work / f"{model}-checkpoints"
    if not (root / "shortcut.json").exists():
        base, vq, sc = random_models(model, depth=depth)
        for name, m in (("base", base), ("vq", vq), ("shortcut", sc)):
            save_checkpoint(m, root / name, meta=getattr(m, "meta", {}))
    return root / "base", root / "vq", root / "shortcut"


def model_precisions(model: str, wanted: list[str]) -> list[str]:
    return [p for p in wanted if model in SHIPPED or p in ("fp32", "fp16")]


def can_build(flavour: str) -> str | None:
    """Why `flavour` cannot build here, or None."""
    try:
        trt.choose_flavour(flavour)
    except MigmError as e:
        return str(e)
    return None


# ---- build ----

def build_section(args, work: Path) -> tuple[list[dict], dict]:
    rows, bundles = [], {}
    for flavour in args.flavours:
        why = can_build(flavour)
        if why:
            rows.append({"model": "-", "bundle": "-", "component": "-", "precision": "-", "flavour": flavour,
                         "result": f"not run: {why}"})
            continue
        for model in args.models:
            ckpt = model_checkpoints(model, work, args.imagenet_depth)
            for precision in model_precisions(model, args.precisions):
                out = work / f"{model}-{precision}-{flavour}.plan"
                print(f"build {out.name}", flush=True)
                t0 = time.perf_counter()
                try:
                    build_bundle(out, BuildSettings(precision=precision, backend="trt", trt_flavour=flavour), *ckpt)
                except MigmError as e:
                    rows.append({"model": model, "bundle": precision, "component": "-", "precision": "-",
                                 "flavour": flavour, "result": f"fails: {e}"})
                    continue
                doc = check_manifest(out)
                bundles[model, precision, flavour] = out
                for name, e in doc["components"].items():
                    rows.append({"model": model, "bundle": precision, "component": name, "precision": e["precision"],
                                 "flavour": flavour, "version": doc["trt"]["version"], "result": "builds",
                                 "build_s": e["build_seconds"], "engine_mb": e["bytes"] / 1e6,
                                 "onnx_mb": e["onnx"]["bytes"] / 1e6, "rel_error_vs_torch": e["rel_error_vs_torch"],
                                 "bundle_s": time.perf_counter() - t0,
                                 "compute_capabilities": doc["trt"]["compute_capabilities"]})
        if "tiny-animals" in args.models and ("tiny-animals", "int8", flavour) in bundles:
            rows.append(int32_bias_row(bundles["tiny-animals", "int8", flavour], work, flavour))
    return rows, bundles


def check_manifest(bundle: Path) -> dict:
    """The bundle's hashes hold, every engine is non-empty, and the manifest's I/O is its ONNX graph's."""
    doc = verify_bundle(bundle).to_dict()  # the JSON view, as recorded
    for name, e in doc["components"].items():
        if (bundle / e["file"]).stat().st_size != e["bytes"] or e["bytes"] == 0:
            raise SystemExit(f"{bundle}: {name} engine size differs from the manifest's")
        if io_spec(bundle / e["onnx"]["file"]) != (e["inputs"], e["outputs"]):
            raise SystemExit(f"{bundle}: {name} inputs/outputs differ from its ONNX graph's")
    return doc


def int32_bias_row(bundle: Path, work: Path, flavour: str) -> dict:
    """The INT8 shortcut as migm quantized it before (ORT's default QuantizeBias: INT32 bias Q/DQ),
    from the same FP32 export and calibration as the bundle's, built the same way."""
    doc = verify_bundle(bundle).to_dict()  # the JSON view, as recorded
    entry = doc["components"]["shortcut"]
    base_p, vq_p, sc_p = model_checkpoints("tiny-animals", work, None)
    base, vq = load_checkpoint(base_p), load_checkpoint(vq_p)
    comp = [c for c in components(base, vq.decoder, load_shortcut(sc_p, base_p)) if c.name == "shortcut"][0]
    fp32 = export_component(comp, work / "int32-bias" / "fp32" / "shortcut.onnx")
    fold_constants(fp32)
    calib = load_calibration(bundle / "calibration.npz")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(shortcut_feeds(calib))

        def get_next(self):
            return next(self.feeds, None)

    legacy = work / "int32-bias" / "shortcut.onnx"
    quantize_static(str(fp32), str(legacy), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=head_matmuls(onnx.load(str(fp32))),
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})  # QuantizeBias: default
    inputs, outputs = io_spec(legacy)
    opts = trt.BuildOptions(flavour=flavour, profiles={k: tuple(tuple(x) for x in v)
                                                       for k, v in entry["profile"].items()})
    row = {"model": "tiny-animals", "bundle": "int8 (before: INT32 bias Q/DQ)", "component": "shortcut",
           "precision": "int8", "flavour": flavour, "version": trt.version(flavour)}
    try:
        built = trt.build_engine(legacy, work / "int32-bias" / "shortcut.engine", opts, component="shortcut",
                                 precision="int8", inputs=inputs, outputs=outputs)
        row.update(result="builds", build_s=built["seconds"],
                   engine_mb=(work / "int32-bias" / "shortcut.engine").stat().st_size / 1e6)
    except MigmError as e:
        row["result"] = f"fails: {e}"
    return row


# ---- agree ----

def agree_section(args, bundles: dict, work: Path) -> list[dict]:
    rows = []
    evaluator = Evaluator(load_checkpoint(assets.CLASSIFIER), load_animals("val").images) if has_animals() else None
    for model in args.models:
        refs = {}
        for (m, precision, flavour), bundle in sorted(bundles.items()):
            if m != model:
                continue
            num = args.dry_num if args.dry_run else args.num
            conds = Pipeline.from_bundle(bundle, backend="torch", device="cpu").example_conditions(num)
            kw = dict(cond=conds, steps=args.steps, budget=args.budget, seed=0, batch_size=min(num, 100))
            if "torch" not in refs:  # the torch backend in fp32 on the same checkpoints, no whole-loop graphs
                base_p, vq_p, sc_p = model_checkpoints(model, work, args.imagenet_depth)
                ref = Pipeline.from_checkpoints(base_p, vq_p, sc_p, device="cpu" if args.dry_run else "cuda",
                                                precision="fp32", model=model if model in SHIPPED else "tiny-animals")
                ref.use_graphs = False
                refs["torch"] = ref.generate_tokens(**kw)
                refs["torch_score"] = _score(evaluator, model, ref, refs["torch"], conds)
            row = {"model": model, "precision": precision, "flavour": flavour, "num": num, "steps": args.steps,
                   "budget": args.budget, "torch_fd": refs["torch_score"].get("fd"),
                   "torch_class_acc": refs["torch_score"].get("class_acc")}
            if args.dry_run:
                row["result"] = "not run: no GPU (torch side only)"
                rows.append(row)
                continue
            try:
                refit.fit_engines(bundle, "cuda", say=lambda msg: print(msg, flush=True))  # as migm-run does
                pipe = Pipeline.from_bundle(bundle, backend="trt")
                tokens = pipe.generate_tokens(**kw)
            except MigmError as e:
                row["result"] = f"cannot run: {e}"
                rows.append(row)
                continue
            score = _score(evaluator, model, pipe, tokens, conds)
            row.update(result="ran", token_agreement=float((tokens == refs["torch"]).float().mean()),
                       fd=score.get("fd"), class_acc=score.get("class_acc"))
            rows.append(row)
            print(f"agree {model} {precision} {flavour}: {row['token_agreement']:.4f}", flush=True)
    return rows


def _score(evaluator, model: str, pipe: Pipeline, tokens, conds) -> dict:
    if evaluator is None or model != "tiny-animals":
        return {}
    return evaluator(pipe.decode(tokens), conds)


# ---- speed ----

def speed_section(args, bundles: dict) -> list[dict]:
    rows = []
    settings = SpeedSettings(batches=args.batches, steps=args.speed_steps, budgets=[args.speed_budget],
                             strategies=["shortcut"], plain=False, repeats=args.repeats)
    for (model, precision, flavour), bundle in sorted(bundles.items()):
        runs = [("trt", precision)] + ([("torch", "fp32" if precision in ("fp32", "int8") else "bf16")]
                                        if precision in ("fp32", "fp16") else [])
        for backend, label in runs:
            info = {"preset": model, "backend": backend, "precision": label, "flavour": flavour if backend == "trt"
                    else "-", "bundle": precision}
            if args.dry_run:
                rows.append({**info, "result": f"not run: no GPU (would time batches {args.batches}, N="
                                               f"{settings.steps}, vanilla and shortcut B={args.speed_budget})"})
                continue
            try:
                refit.fit_for_backend(bundle, backend, say=lambda msg: print(msg, flush=True))  # as migm-run does
                pipe = Pipeline.from_bundle(bundle, backend=backend)
                info["device"] = torch.cuda.get_device_name(pipe.device)
                rows += [{**r, "result": "ran"} for r in measure(pipe, settings, info, say=print)]
            except MigmError as e:
                rows.append({**info, "result": f"cannot run: {e}"})
    return rows


# ---- tables ----

def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of `rows` with (key, header, format) columns; '-' where a row has no value."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("-" if v is None else format(v, fmt) if fmt else str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


BUILD_COLUMNS = [("model", "model", ""), ("bundle", "bundle", ""), ("component", "component", ""),
                 ("precision", "precision", ""), ("flavour", "flavour", ""), ("result", "result", ""),
                 ("build_s", "build s", ".2f"), ("engine_mb", "engine MB", ".2f")]
AGREE_COLUMNS = [("model", "model", ""), ("precision", "bundle", ""), ("flavour", "flavour", ""),
                 ("num", "images", "d"), ("token_agreement", "tokens = torch", ".4f"), ("fd", "FD", ".2f"),
                 ("torch_fd", "torch FD", ".2f"),
                 ("class_acc", "class acc", ".3f"), ("result", "result", "")]
SPEED_COLUMNS = [("preset", "model", ""), ("backend", "backend", ""), ("precision", "precision", ""),
                 ("flavour", "flavour", ""), ("batch", "batch", "d"), ("strategy", "loop", ""), ("steps", "N", "d"),
                 ("budget", "B", "d"), ("images_per_s", "images/s", ".1f"), ("ms_per_image", "ms/image", ".3f"),
                 ("result", "result", "")]


def write(out: Path, name: str, rows: list[dict], columns, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / f"{name}.md").write_text(header + "\n\n" + markdown(rows, columns))
    print(f"wrote {out / name}.json and .md", flush=True)


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {gpu}; " + \
           ", ".join(f"{trt.LABELS[f]} {trt.version(f) or 'not installed'}" for f in trt.FLAVOURS)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # migm logs what it builds or rebuilds
    args = parse_args(argv)
    out = Path(args.out)
    mode = "dry run (no GPU)" if args.dry_run else "GPU run"
    header = f"`python benchmarks/trt_gpu.py {' '.join(sys.argv[1:] if argv is None else argv)}` ({mode}; {machine()})"
    with tempfile.TemporaryDirectory(prefix="migm-trt-") as tmp:
        work = Path(args.work or tmp)
        rows, bundles = build_section(args, work)  # the later sections run the bundles it builds
        if "build" in args.sections:
            write(out, "build", rows, BUILD_COLUMNS, header)
        if "agree" in args.sections:
            write(out, "agree", agree_section(args, bundles, work), AGREE_COLUMNS, header)
        if "speed" in args.sections:
            write(out, "speed", speed_section(args, bundles), SPEED_COLUMNS, header)


if __name__ == "__main__":
    main()
