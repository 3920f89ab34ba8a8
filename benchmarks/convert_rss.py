"""Peak resident memory of `migm-export convert maskgit` on a ~100 KB .pth whose tok_emb is a
stride-0 view declaring 2 GiB (tests/test_hardening_readers.py builds it), for one or more
source trees (e.g. this one and an older checkout), measured with /usr/bin/time -v.

    python benchmarks/convert_rss.py [--src DIR ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", action="append", default=None, help="A source tree to run (default: this one).")
    ap.add_argument("--declared-gib", type=float, default=2.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from test_hardening_readers import declaring_files

    rows = []
    with tempfile.TemporaryDirectory(prefix="migm-rss-") as tmp:
        files = declaring_files(Path(tmp), int(args.declared_gib * (1 << 30)))
        size = files["base"].stat().st_size
        for src in args.src or [str(ROOT)]:
            out = Path(tmp) / f"out-{len(rows)}"
            cmd = ["/usr/bin/time", "-v", sys.executable, "-c", "from migm.cli.export import main; main()",
                   "convert", "maskgit", "--base", str(files["base"]), "--vqgan", str(files["vqgan"]),
                   "--heads", "4", "--out", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=src,
                                  env={**os.environ, "PYTHONPATH": src})
            peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
            lines = [line for line in (proc.stdout + proc.stderr).splitlines()
                     if line.strip() and not line.startswith("\t") and not line.startswith("Command ")]
            rows.append({"src": src, "file_bytes": size, "declared_bytes": int(args.declared_gib * (1 << 30)),
                         "exit": proc.returncode, "peak_rss_mib": round(peak / 1024, 1),
                         "last_line": (lines[-1] if lines else "")[:300]})
    print(f"{'source':40s} {'file':>9s} {'exit':>4s} {'peak RSS':>10s}  message")
    for r in rows:
        print(f"{r['src'][-40:]:40s} {r['file_bytes']:9d} {r['exit']:4d} {r['peak_rss_mib']:8.1f} MiB  "
              f"{r['last_line']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
