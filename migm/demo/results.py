"""The committed quality results (benchmarks/results/**/*.json) as cost-vs-quality tables for the
demo page: FD and token agreement against base-model calls, one line per strategy.

The files are data: read with a size bound, as JSON, and only rows of the expected shape are kept
(a row: strategy, steps N, budget B, base-call cost, and FD or token agreement); anything else is
skipped. Rows of one file at one N make one table; repeated seeds are averaged.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_BYTES = 4 << 20  # the committed result files are a few kB; a larger one is not one of them
MAX_FILES = 200


@dataclass
class Table:
    name: str  # "quality_lowbudget_n32.json, N=32"
    steps: int
    # strategy label -> sorted [(base calls, FD or None, token agreement or None)]
    lines: dict[str, list[tuple[float, float | None, float | None]]] = field(default_factory=dict)


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _rows(doc) -> list:
    if isinstance(doc, dict):
        doc = doc.get("rows")
    return doc if isinstance(doc, list) else []


def read_file(path: Path) -> list[dict]:
    """The usable quality rows of one result file ([] for anything else)."""
    try:
        if path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            return []
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    out = []
    for row in _rows(doc):
        if not isinstance(row, dict) or not isinstance(row.get("strategy"), str):
            continue
        steps, budget = row.get("steps"), row.get("budget")
        cost = _number(row.get("cost", row.get("base_calls")))
        fd, agree = _number(row.get("fd")), _number(row.get("token_agreement"))
        if not (isinstance(steps, int) and isinstance(budget, int) and cost is not None) or (fd is None and
                                                                                            agree is None):
            continue
        label = row["strategy"][:40]
        if isinstance(row.get("shortcut"), str) and row["shortcut"]:
            label = f"{label} ({row['shortcut'][:40]})"
        out.append({"label": label, "steps": steps, "cost": cost, "fd": fd, "agree": agree})
    return out


def load_tables(root: str | Path) -> list[Table]:
    """One table per (file, N) under `root` with at least two strategies."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*.json") if p.is_file())[:MAX_FILES] if root.is_dir() else []
    tables = []
    for path in files:
        by_steps: dict[int, dict] = defaultdict(lambda: defaultdict(list))
        for r in read_file(path):
            by_steps[r["steps"]][(r["label"], r["cost"])].append(r)
        for steps, groups in sorted(by_steps.items()):
            table = Table(name=f"{path.relative_to(root)}, N={steps}", steps=steps)
            for (label, cost), rows in sorted(groups.items()):
                fds = [r["fd"] for r in rows if r["fd"] is not None]
                agrees = [r["agree"] for r in rows if r["agree"] is not None]
                table.lines.setdefault(label, []).append(
                    (cost, sum(fds) / len(fds) if fds else None, sum(agrees) / len(agrees) if agrees else None))
            if len(table.lines) >= 2:
                tables.append(table)
    return tables


def plot(table: Table):
    """A matplotlib figure: FD (left) and token agreement (right) against base calls, a line per strategy."""
    import matplotlib  # optional heavy dependency: only the page's plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional heavy dependency (see above)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, k, title in ((axes[0], 1, "FD (lower is better)"), (axes[1], 2, "token agreement with vanilla N")):
        for label, points in sorted(table.lines.items()):
            pts = [(p[0], p[k]) for p in points if p[k] is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set_xlabel("base-model calls per image")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(table.name)
    fig.tight_layout()
    plt.close(fig)
    return fig
