"""Which training choices make a better shortcut: one lever at a time, at equal iterations.

    python benchmarks/shortcut_levers.py --trajectories runs/traj32           # train, record, evaluate, report
    python benchmarks/shortcut_levers.py --report-only                        # the table and curves again

Variants (every one the MaskGIT shortcut of the shipped tiny-animals base, one block, r = 2,
4 heads, the same seed; `--iters` iterations of batch 32, no lr decay, unless said):

    released      the released recipe: MSE only, teacher forcing (k = 1), upstream layout
    rollout_kl    + chained rollout along the hybrid plans (k <= 6, B = 4, 5, 6, 8) and the KL on
                  the guided logits (weight 1)   <- the reference every other lever changes one thing of
    migm_layout   rollout_kl in this project's first layout instead of the released one
    traj600       rollout_kl on the first 600 trajectories instead of all (the "more data" lever)
    onpolicy600   rollout_kl on 600 trajectories the hybrid sampler itself visits (recorded with
                  rollout_kl's shortcut at N = 32, B = 6; the base's features on those states as targets)
    long          rollout_kl continued until the validation KL stops falling (--patience 3)

Every variant is validated on the same held-out trajectories of the off-policy set (the last 5%,
never trained on), then sampled by `migm-bench quality` at N = 32, B = 4 and 6 (FD and the paired
fidelity against vanilla N = 32 with the same seed and noise). Output: OUT/levers.{json,md} and
OUT/curves.png (validation KL against iterations for each variant).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from migm import assets
from migm.models.checkpoint import load_checkpoint, read_config
from migm.training.train_shortcut import Model, plateaued, validate
from migm.training.trajectories import TrajectorySet

PY = sys.executable
COMMON = ["--batch-size", "32", "--lr", "5e-4", "--ema", "0.995", "--heads", "4"]
ROLLOUT = ["--rollout", "6", "--plan-budgets", "4,5,6,8", "--kl", "1"]


def variants(a) -> dict[str, dict]:
    # no lr decay inside the compared iterations (the EMA weights are what is saved), so `long` is
    # the reference run continued, not a second run from scratch
    fixed = ["--steps", str(a.iters), "--decay-at", "1000000", "--eval-every", str(a.eval_every)]
    return {
        "released": {"args": fixed + ["--rollout", "1", "--kl", "0"], "traj": a.trajectories,
                     "what": "released recipe: MSE, teacher forcing (k = 1)"},
        "rollout_kl": {"args": fixed + ROLLOUT, "traj": a.trajectories,
                       "what": "+ rollout along the plans (k <= 6) + guided KL (reference)"},
        "migm_layout": {"args": fixed + ROLLOUT + ["--layout", "migm"], "traj": a.trajectories,
                        "what": "reference in migm's own first layout"},
        "traj600": {"args": fixed + ROLLOUT + ["--max-trajectories", "600"], "traj": a.trajectories,
                    "what": "reference on 600 of the trajectories"},
        "onpolicy600": {"args": fixed + ROLLOUT, "traj": a.onpolicy,
                        "what": "reference on 600 on-policy trajectories (hybrid B = 6)"},
        "long": {"args": ["--steps", str(a.long_iters), "--decay-at", "1000000", "--eval-every", str(a.eval_every),
                          "--patience", "3"] + ROLLOUT, "traj": a.trajectories, "continues": "rollout_kl",
                 "what": "reference continued until the validation KL stops falling (patience 3)"},
    }


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train(a, vs: dict) -> None:
    for name in a.only or vs:
        v = vs[name]
        if name == "onpolicy600" and not (Path(a.onpolicy) / "manifest.json").exists():
            run([PY, "-m", "migm.cli.train", "trajectories", "--out", a.onpolicy, "--images", "600", "--steps", "32",
                 "--seed", "200", "--shortcut", str(Path(a.runs) / "rollout_kl"), "--budget", "6",
                 "--device", a.device])
        out = Path(a.runs) / name
        if v.get("continues") and not out.with_suffix(".json").exists():  # start from the reference's state
            for suffix in (".safetensors", ".json", ".train.pt"):
                shutil.copyfile((Path(a.runs) / v["continues"]).with_suffix(suffix), out.with_suffix(suffix))
        run([PY, "-m", "migm.cli.train", "shortcut", "--trajectories", v["traj"], "--out", str(out), *COMMON,
             *v["args"], "--device", a.device])


def evaluate(a, vs: dict) -> None:
    shortcuts = [f"shortcut={Path(a.runs) / n}" for n in vs]
    run([PY, "-m", "migm.cli.bench", "quality", "--steps", "32", "--budget", a.budgets,
         "--strategies", ",".join(["vanilla", *shortcuts]), "--shortcut", str(Path(a.runs) / "rollout_kl"),
         "--num", str(a.num), "--seed", "0", "--err-num", "0", "--json", str(Path(a.out) / "quality.json"),
         "--resume"])


def report(a, vs: dict) -> None:
    out = Path(a.out)
    base = load_checkpoint(assets.BASE)
    ts = TrajectorySet(a.trajectories)
    n_val = max(1, int(round(len(ts) * 0.05)))
    items = list(range(len(ts) - n_val, len(ts)))[:48]  # the held-out trajectories train_shortcut validates on
    m = Model.of(base)
    quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else []
    rows, curves = [], {}
    reuse = None
    for name, v in vs.items():
        path = Path(a.runs) / name
        if not path.with_suffix(".json").exists():
            continue
        torch.manual_seed(0)
        model = load_checkpoint(path)
        model.load_base_embeddings(base)
        with torch.no_grad():
            val = validate(model.eval(), ts, items, m)
        reuse = {k.removeprefix("reuse_"): val[k] for k in val if k.startswith("reuse_")}
        meta = read_config(path)["meta"]
        # the curve is validated during training on the held-out end of the variant's own set:
        # the on-policy set's curve is not on the same trajectories as the others'
        own = "" if Path(v["traj"]) == Path(a.trajectories) else " (own held-out set)"
        curves[name + own] = meta.get("curve", [])
        what = v["what"]
        if name == "long":  # say where the curve stands: a run stopped for time is not a plateau
            what += "; stopped: KL flat" if plateaued(meta.get("curve", []), 3) else \
                f"; interrupted at {meta['step']}, KL still falling"
        row = {"variant": name, "what": what, "iterations": meta["step"],
               **{k: val[k] for k in ("rel_err_1", "rel_err_chain", "kl_1", "kl_chain")}}
        for q in quality:
            if q["strategy"] == "shortcut" and q.get("shortcut") == name:
                b = q["budget"]
                row.update({f"fd_b{b}": q["fd"], f"agree_b{b}": q["token_agreement"],
                            f"pixel_mae_b{b}": q["pixel_mae"], f"feat_dist_b{b}": q["feature_dist"]})
        rows.append(row)
    vanilla = [q for q in quality if q["strategy"] == "vanilla"]
    doc = {"rows": rows, "reuse": reuse, "vanilla_fd": vanilla[0]["fd"] if vanilla else None, "curves": curves,
           "validated_on": {"trajectories": Path(a.trajectories).name, "items": items}}
    (out / "levers.json").write_text(json.dumps(doc, indent=1) + "\n")
    budgets = [int(b) for b in a.budgets.split(",")]
    head = ["variant", "iterations", "val rel. err 1 / 3", "val KL 1 / 3"] + \
        [f"FD B={b}" for b in budgets] + [f"agree B={b}" for b in budgets] + [f"pixel MAE B={b}" for b in budgets] + \
        [f"feat. dist B={b}" for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r, k, fmt):
        return format(r[k], fmt) if k in r else "-"

    if reuse:
        lines.append(f"| feature reuse (no model) | - | {reuse['rel_err_1']:.3f} / {reuse['rel_err_chain']:.3f} | "
                     f"{reuse['kl_1']:.3f} / {reuse['kl_chain']:.3f} |" + " |" * (4 * len(budgets)))
    for r in rows:
        lines.append(" | ".join([f"| {r['variant']}: {r['what']}", str(r["iterations"]),
                                 f"{r['rel_err_1']:.3f} / {r['rel_err_chain']:.3f}",
                                 f"{r['kl_1']:.4f} / {r['kl_chain']:.4f}",
                                 *[cell(r, f"fd_b{b}", ".2f") for b in budgets],
                                 *[cell(r, f"agree_b{b}", ".3f") for b in budgets],
                                 *[cell(r, f"pixel_mae_b{b}", ".4f") for b in budgets],
                                 *[cell(r, f"feat_dist_b{b}", ".3f") for b in budgets]]) + " |")
    if vanilla:
        lines.append(f"\nvanilla N = 32 (seed 0, {vanilla[0]['num']} images): FD {vanilla[0]['fd']:.2f}")
    (out / "levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(curves, reuse, out / "curves.png")


def _plot(curves: dict, reuse: dict | None, path: Path) -> None:
    import matplotlib  # optional: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "kl_1", "one step"), (axes[1], "kl_chain", "3 chained steps")):
        for name, c in curves.items():
            if c:
                ax.plot([e["step"] for e in c], [e[key] for e in c], marker=".", label=name)
        if reuse:
            ax.axhline(reuse[key], color="grey", ls="--", label="feature reuse")
        ax.set(title=f"validation guided-logit KL, {title}", xlabel="iteration", ylabel="KL")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", default="runs/traj32", help="off-policy set (migm-train trajectories)")
    p.add_argument("--onpolicy", default="runs/traj32_onpolicy", help="on-policy set (recorded when missing)")
    p.add_argument("--runs", default="runs/levers", help="where the variants train")
    p.add_argument("--out", default="benchmarks/results/levers")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--long-iters", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--budgets", default="4,6")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="train only these variants")
    p.add_argument("--device", default="cpu", help="where the variants train (cuda on a GPU machine)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="train only")
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    vs = variants(a)
    if not a.report_only:
        train(a, vs)
        if a.no_eval:
            return
        evaluate(a, vs)
    report(a, vs)


if __name__ == "__main__":
    main()
