"""dimoo-8b at full width with few layers: ONNX export, ORT parity on a short sequence, and its bundle.

    python benchmarks/dimoo_export.py --depth 2 --grid 16 --out migm-out/dimoo2.plan

Random weights (the real ones cannot be downloaded here), the full 4096 width, 32 heads,
SwiGLU 12288 and the full 134,548-row vocabulary; `--grid` shortens the image part of the
sequence (16x16 tokens: 64 + 4 + 256 + 16 = 340 positions) so ONNX Runtime on a CPU checks
parity in seconds. The base alone is 1.5B parameters (6.2 GB in fp32), so its ONNX keeps
its weights as external data (base.onnx.data). Writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import verify_bundle
from migm.engines.verify import parity
from migm.export.onnx import components, export_component
from migm.families.presets import random_models
from migm.models.checkpoint import checkpoint_digest, save_checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--precision", default="fp32",
                    help="Bundle precision: fp32, or fp16 where memory allows (the FP16 pass holds the FP32 and "
                         "FP16 graphs at once, beside the torch models: over 24 GB for this size)")
    ap.add_argument("--out", default="migm-out/dimoo2.plan")
    ap.add_argument("--json", default="benchmarks/results/dimoo_export.json")
    args = ap.parse_args()
    report = {"depth": args.depth, "grid": args.grid, "precision": args.precision}
    t0 = time.perf_counter()
    base, vq, sc = random_models("dimoo-8b", depth=args.depth, grid=args.grid)
    report["params"] = {"base": sum(p.numel() for p in base.parameters()),
                        "shortcut": sum(p.numel() for p in sc.parameters()), "seq_len": base.cfg.seq_len}
    print(f"built: base {report['params']['base'] / 1e9:.2f}B, shortcut {report['params']['shortcut'] / 1e6:.0f}M, "
          f"sequence {base.cfg.seq_len} ({time.perf_counter() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent if Path(args.out).parent.exists() else None) as d:
        d = Path(d)
        # parity of the FP32 exports against torch at batch 1 and 3 (base and shortcut)
        rows = []
        for comp in components(base, vq.decoder, sc):
            if comp.name == "decoder":
                continue
            t = time.perf_counter()
            path = export_component(comp, d / "onnx" / f"{comp.name}.onnx")
            size = sum(f.stat().st_size for f in path.parent.glob(f"{comp.name}.onnx*"))
            print(f"exported {comp.name}: {size / 1e9:.2f} GB ({time.perf_counter() - t:.0f} s)", flush=True)
            got = parity(comp, path, batches=(1, 3), new_tokens=(1, 7))
            for r in got:
                print(f"  {r['component']} batch {r['batch']} {r['output']}: max abs {r['max_abs']:.2e}, "
                      f"rel {r['rel_l2']:.2e}", flush=True)
            rows += got
            (d / "onnx" / f"{comp.name}.onnx").unlink()
            for f in (d / "onnx").glob(f"{comp.name}.onnx.data"):
                f.unlink()
        report["parity"] = rows
        del comp  # the last component holds the shortcut
        # the bundle, through `migm-export build`'s code
        for name, m in (("base", base), ("vq", vq)):
            save_checkpoint(m, d / name, meta=getattr(m, "meta", {}))
        save_checkpoint(sc, d / "sc", meta={"base_digest": checkpoint_digest(d / "base")})
        del base, sc
        t = time.perf_counter()
        out = build_bundle(args.out, BuildSettings(precision=args.precision, backend="ort"), d / "base", d / "vq",
                           d / "sc", progress=lambda m: print("  build:", m, flush=True))
        doc = verify_bundle(out).to_dict()  # the JSON view, as recorded
        report["bundle"] = {"path": str(out), "seconds": time.perf_counter() - t,
                            "components": {k: {kk: v[kk] for kk in ("file", "precision", "bytes", "rel_error_vs_torch")
                                               if kk in v} | ({"data_file": v["data_file"]} if "data_file" in v else {})
                                           for k, v in doc["components"].items()},
                            "files": sorted(p.name for p in out.iterdir())}
        print(json.dumps(report["bundle"], indent=1), flush=True)
    Path(args.json).write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
