"""Start-up cost of the runtime and the CLI: `python -X importtime -c 'import migm.runtime'` (modules
imported, their cumulative import time, wall time) and the wall time of `migm-run --help`, each in a
fresh process, repeated and interleaved across source trees (this one, and `--compare DIR`: another
checkout, e.g. the commit before a change), medians reported with the machine's load.

    python benchmarks/startup.py --compare /tmp/migm-before --repeats 5

Prints a table, writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP = "from migm.cli.run import main; main(['--help'])"


def importtime(tree: Path, code: str) -> tuple[int, float, float]:
    """(modules imported, the top-level imports' summed cumulative seconds, wall seconds) of `code`;
    the wall time from a second run without -X importtime (which slows imports down)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    plain = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, cwd=tree, capture_output=True,
                         text=True)
    if res.returncode or plain.returncode:
        raise SystemExit(f"{tree}: {res.stderr[-2000:]}")
    rows = [m for m in (re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
                        for line in res.stderr.splitlines()) if m]
    top = sum(int(m.group(2)) for m in rows if len(m.group(3)) == 1)  # indent 1: imported by the code itself
    return len(rows), top / 1e6, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", default=None, help="Another source tree (its root, holding migm/) to measure too.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = ap.parse_args()
    trees = {"this": ROOT, **({"compare": Path(args.compare).resolve()} if args.compare else {})}
    cases = {"import migm.runtime": "import migm.runtime", "migm-run --help": HELP}
    runs = {(t, c): [] for t in trees for c in cases}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for case, code in cases.items():
            for name, tree in trees.items():  # interleaved: load changes hit both trees alike
                runs[(name, case)].append(importtime(tree, code))
    rows = []
    for (name, case), samples in runs.items():
        rows.append({"tree": _commit(trees[name]), "which": name, "case": case,
                     "modules": int(statistics.median(s[0] for s in samples)),
                     "importtime_s": round(statistics.median(s[1] for s in samples), 3),
                     "wall_s": round(statistics.median(s[2] for s in samples), 3),
                     "wall_runs_s": [round(s[2], 3) for s in samples]})
    result = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeats": args.repeats,
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']}")
    print(f"{'case':<22} {'tree':<8} {'modules':>8} {'importtime s':>13} {'wall s':>8}")
    for r in rows:
        print(f"{r['case']:<22} {r['which']:<8} {r['modules']:>8} {r['importtime_s']:>13.2f} {r['wall_s']:>8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _commit(tree: Path) -> str:
    """The tree's commit (its path would name this machine's folders in a committed result)."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    main()
