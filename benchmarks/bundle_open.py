"""How long opening a bundle takes, first open against later ones (each in a fresh process, as
`migm-generate` workers and `migm-run` start): the files' check alone (`verify_bundle`) and the whole
`Pipeline.from_bundle`. The first open hashes every file and writes a verification stamp into the
user's cache; later opens re-hash only files whose stat changed; `verify=True` hashes all again
(what every open did before stamps).

    python benchmarks/bundle_open.py                              # maskgit-imagenet512, fp32, random weights
    python benchmarks/bundle_open.py --preset tiny-animals-random --repeats 5

The bundle is built once (random weights, as `migm-bench speed` builds them) into $MIGM_CACHE/bundles;
stamps go to a fresh cache directory per measurement series. Prints a table, writes
benchmarks/results/bundle_open.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBE = """
import sys, time
t0 = time.perf_counter()
from migm.engines.bundle import verify_bundle
from migm.runtime import Pipeline
t1 = time.perf_counter()
what, path, full = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if what == "verify":
    verify_bundle(path, full=full)
else:
    Pipeline.from_bundle(path, backend="ort", verify=full)
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def build(preset: str, out: Path) -> Path:
    from migm.engines.build import BuildSettings, build_bundle
    from migm.families.presets import random_models
    from migm.models.checkpoint import save_checkpoint

    if (out / "manifest.json").exists():
        return out
    print(f"building {out} (random weights, once)", flush=True)
    t = time.perf_counter()
    base, vq, sc = random_models(preset)
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in (("base", base), ("vq", vq), ("shortcut", sc)):
            save_checkpoint(m, f"{tmp}/{name}", meta=getattr(m, "meta", {}))
        build_bundle(out, BuildSettings(precision="fp32", backend="ort"), f"{tmp}/base", f"{tmp}/vq",
                     f"{tmp}/shortcut", progress=lambda msg: print(f"  {msg}", flush=True))
    print(f"built in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def run(what: str, bundle: Path, full: bool, cache: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIGM_CACHE": str(cache)}
    res = subprocess.run([sys.executable, "-c", PROBE, what, str(bundle), "1" if full else "0"], env=env,
                         capture_output=True, text=True, check=True)
    return float(res.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="maskgit-imagenet512")
    ap.add_argument("--bundle", default=None, help="An existing fp32 ort bundle instead of building one.")
    ap.add_argument("--repeats", type=int, default=3, help="Series per measurement (medians are reported).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bundle_open.json"))
    args = ap.parse_args()

    from migm.fileio import cache_dir

    bundle = Path(args.bundle) if args.bundle else build(args.preset, cache_dir() / "bundles" /
                                                         f"{args.preset}-random-ort-fp32.plan")
    doc = json.loads((bundle / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    rows = []
    load_before = os.getloadavg()
    for what in ("verify", "from_bundle"):
        series = {"first": [], "second": [], "third": [], "verify=True": []}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="migm-open-cache-") as cache:  # no stamp yet: a first open
                series["first"].append(run(what, bundle, False, Path(cache)))
                series["second"].append(run(what, bundle, False, Path(cache)))
                series["third"].append(run(what, bundle, False, Path(cache)))
                series["verify=True"].append(run(what, bundle, True, Path(cache)))
        for open_, secs in series.items():
            rows.append({"measure": what, "open": open_, "median_s": round(statistics.median(secs), 4),
                         "runs_s": [round(s, 4) for s in secs]})
    result = {"bundle": str(bundle), "preset": args.preset if not args.bundle else None,
              "precision": doc["precision"], "bytes": size, "files": sum(1 for f in bundle.rglob("*") if f.is_file()),
              "repeats": args.repeats, "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "cpu": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "rows": rows,
              "note": "each open in a fresh process; 'first' has no stamp (what every open cost before stamps), "
                      "'verify=True' forces the full hash; the page cache is warm after the first series"}
    print(f"{bundle.name}: {size / 1e9:.2f} GB in {result['files']} files, load {result['loadavg_before']}")
    print(f"{'measure':<12} {'open':<12} {'median s':>9}   runs")
    for r in rows:
        print(f"{r['measure']:<12} {r['open']:<12} {r['median_s']:>9.3f}   {r['runs_s']}")
    first = {r["measure"]: r["median_s"] for r in rows if r["open"] == "first"}
    second = {r["measure"]: r["median_s"] for r in rows if r["open"] == "second"}
    for m in first:
        print(f"{m}: second open {second[m]:.3f} s vs first {first[m]:.3f} s ({first[m] / max(second[m], 1e-9):.0f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
