"""GenEval-like benchmark of the tiny text-to-image model (tiny-scenes).

Every one of the 80 captions ("a small cat on the left", ...) is sampled `--seeds` times with
each strategy; every image is read back (training/scenes.py `judge`) and scored:

  animal     the crop classifier (trained on object crops of real scenes) names the prompt's animal
  position   the object's box lies towards the prompt's side of the canvas centre
  size       the box's longer side says small (20 px) or large (36 px) as the prompt does
  all        all three right (GenEval's "overall": an image counts only when fully right)
  FD         Frechet distance between crop-classifier features of the generated objects and of
             real validation scenes' objects (lower is better)

Rows: vanilla DiMOO sampling with N steps; MIGM-Shortcut with B of N base calls; the
training-free strategies at the same B (reuse, extrapolate, fewer = N'=B steps); the real
scenes as the ceiling the judge allows. Same seeds for every row.

    python benchmarks/geneval_scenes.py --steps 32 --budgets 6,8,12 --seeds 4
    python benchmarks/geneval_scenes.py --sweep-cfg 0,1,2,3,4 --seeds 2     # pick the CFG weight

Writes benchmarks/results/geneval_scenes.json (+ .md) and a grid of prompts per row (--grid).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from migm import assets
from migm.data.scenes import all_captions, make_scenes
from migm.evaluation.judge import judge
from migm.evaluation.metrics import frechet_distance
from migm.fileio import atomic_path
from migm.models.checkpoint import load_checkpoint
from migm.runtime.images import make_grid, save_png
from migm.runtime.pipeline import Pipeline
from migm.sampling.loop import HybridStats

GRID_PROMPTS = ["a small cat on the left", "a large elephant at the bottom", "a small bird at the top",
                "a large zebra on the right", "a large horse on the left", "a small giraffe on the right",
                "a large cow at the top", "a small dog at the bottom"]


@torch.no_grad()
def score(images: torch.Tensor, animals: torch.Tensor, sizes: list[str], positions: list[str], classifier,
          ref_feats: np.ndarray | None, per_image: dict | None = None) -> dict:
    """The judged scores of a set of images; `per_image` (if given) receives each image's verdict
    ("all") and crop features, for the paired comparison with the vanilla row."""
    j = judge(images)
    pred = torch.cat([classifier(j.crops[i:i + 500]).argmax(-1) for i in range(0, len(images), 500)])
    animal = (pred == animals) & j.found
    pos = torch.tensor([a == b for a, b in zip(j.positions, positions)])
    size = torch.tensor([a == b for a, b in zip(j.sizes, sizes)])
    out = {"animal": animal.float().mean().item(), "position": pos.float().mean().item(),
           "size": size.float().mean().item(), "all": (animal & pos & size).float().mean().item(),
           "found": j.found.float().mean().item()}
    feats = torch.cat([classifier.features(j.crops[i:i + 500]) for i in range(0, len(images), 500)])
    feats = feats.numpy().astype(np.float64)
    if ref_feats is not None:
        out["fd"] = frechet_distance(feats, ref_feats)
    if per_image is not None:
        per_image.update(all=(animal & pos & size), feats=feats)
    return out


def paired(tokens, images, mine: dict, ref: dict) -> dict:
    """Each image against the vanilla N-step image of the same prompt and seed: token agreement,
    mean absolute pixel error, the crop-feature distance (relative to the reference's norm), and
    the share of images the judge scores the same way (all three right, or not)."""
    dist = np.linalg.norm(mine["feats"] - ref["feats"], axis=1) / np.maximum(np.linalg.norm(ref["feats"], axis=1),
                                                                             1e-12)
    return {"token_agreement": float((tokens == ref["tokens"]).float().mean()),
            "pixel_mae": float((images - ref["images"]).abs().mean()), "feature_dist": float(dist.mean()),
            "verdict_agreement": float((mine["all"] == ref["all"]).float().mean())}


def rows_for(steps: int, budgets: list[int], strategies: list[str]) -> list[dict]:
    rows = [{"strategy": "vanilla", "steps": steps, "budget": steps}]
    for b in budgets:
        rows += [{"strategy": s, "steps": steps, "budget": b} for s in strategies]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--budgets", default="6,8,12")
    ap.add_argument("--strategies", default="shortcut,reuse,extrapolate,fewer")
    ap.add_argument("--seeds", type=int, default=4, help="Images per caption (80 captions).")
    ap.add_argument("--cfg", type=float, default=None, help="Guidance weight (default: the model's).")
    ap.add_argument("--sweep-cfg", default="", help="Only vanilla sampling at these CFG weights (choose one).")
    ap.add_argument("--model-dir", default=None, help="Checkpoints dir (default: the shipped tiny-scenes).")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=160)
    ap.add_argument("--grid", default=None, help="Write a grid PNG per row into this directory.")
    ap.add_argument("--out", default="benchmarks/results/geneval_scenes.json")
    args = ap.parse_args()

    d = Path(args.model_dir) if args.model_dir else assets.SCENES
    pipe = Pipeline.from_checkpoints(d / "base", d / "vq", d / "shortcut" if assets.has_checkpoint(d / "shortcut")
                                     else None, device=args.device)
    classifier = load_checkpoint(d / "classifier").float().eval()
    caps = all_captions()
    prompts = [c for c, *_ in caps] * args.seeds
    animals = torch.tensor([a for _, a, _, _ in caps] * args.seeds)
    sizes = [s for *_, s, _ in caps] * args.seeds
    positions = [p for *_, p in caps] * args.seeds
    real = make_scenes("val", 1, seed=1)
    ref = score(real.images, real.animals, real.sizes, real.positions, classifier, None)
    with torch.no_grad():
        ref_feats = classifier.features(judge(real.images).crops).numpy().astype(np.float64)
    # named, not located: results are committed, this machine's paths are not
    model = Path(args.model_dir).name if args.model_dir else "migm/assets/scenes"
    results = {"model": model, "device": str(pipe.device), "captions": len(caps), "seeds": args.seeds,
               "images_per_row": len(prompts), "real_scenes": {**ref, "fd": 0.0, "images": len(real.images)},
               "sampling": pipe.defaults.to_dict(), "rows": []}
    print(f"real scenes (judge ceiling): animal {ref['animal']:.3f} position {ref['position']:.3f} "
          f"size {ref['size']:.3f} all {ref['all']:.3f}")
    if args.sweep_cfg:
        rows = [{"strategy": "vanilla", "steps": args.steps, "budget": args.steps, "cfg": float(w)}
                for w in args.sweep_cfg.split(",")]
    else:
        rows = rows_for(args.steps, [int(b) for b in args.budgets.split(",")], args.strategies.split(","))
    ref = None  # the vanilla N-step row's tokens, images and verdicts (the first row), for the paired metrics
    for row in rows:
        cfg = row.get("cfg", args.cfg)
        stats = HybridStats()
        t = time.perf_counter()
        tokens = pipe.generate_tokens(prompts=prompts, steps=row["steps"], budget=row["budget"],
                                      strategy=row["strategy"], guidance=cfg, seed=0, batch_size=args.batch_size,
                                      stats=stats)
        images = pipe.decode(tokens)
        elapsed = time.perf_counter() - t
        mine = {}
        r = {**row, "cfg": pipe.defaults.guidance if cfg is None else cfg,
             "base_calls": stats.base_calls / max(1, len(range(0, len(prompts), args.batch_size))),
             "seconds": elapsed, **score(images, animals, sizes, positions, classifier, ref_feats, mine)}
        if ref is None and row["strategy"] == "vanilla" and not args.sweep_cfg:
            ref = {"tokens": tokens, "images": images, **mine}
        elif ref is not None:
            # "fewer" runs N' = B steps and so draws other random numbers: its pairing shares the seed only
            r.update(paired(tokens, images, mine, ref), noise_shared=row["strategy"] != "fewer")
        results["rows"].append(r)
        extra = f" agree {r['token_agreement']:.3f} pixel {r['pixel_mae']:.4f}" if "token_agreement" in r else ""
        print(f"{r['strategy']:12s} N={r['steps']:3d} B={r['budget']:3d} cfg={r['cfg']:.1f}: animal {r['animal']:.3f} "
              f"position {r['position']:.3f} size {r['size']:.3f} all {r['all']:.3f} FD {r['fd']:.2f}{extra} "
              f"({elapsed:.1f} s)", flush=True)
        if args.grid:
            g = pipe.generate(prompts=GRID_PROMPTS * 4, steps=row["steps"], budget=row["budget"],
                              strategy=row["strategy"], guidance=cfg, seed=1)
            name = f"{row['strategy']}-N{row['steps']}-B{row['budget']}" + (f"-cfg{cfg}" if "cfg" in row else "")
            save_png(make_grid(g, ncol=len(GRID_PROMPTS)), Path(args.grid) / f"{name}.png", scale=2)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    r0 = results["real_scenes"]
    lines = [f"{results['images_per_row']} images per row ({results['captions']} captions x {results['seeds']} seeds), "
             f"device {results['device']}\n",
             "| strategy | N | B (base calls) | CFG | animal | position | size | all | FD | token agreement | "
             "pixel MAE | feature dist | same verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| real scenes (judge ceiling) | - | - | - | {r0['animal']:.3f} | {r0['position']:.3f} | "
             f"{r0['size']:.3f} | {r0['all']:.3f} | 0 | - | - | - | - |"]
    for r in results["rows"]:
        pair = " | ".join(f"{r[k]:.3f}" if k in r else "-"
                          for k in ("token_agreement", "pixel_mae", "feature_dist", "verdict_agreement"))
        lines.append(f"| {r['strategy']} | {r['steps'] if r['strategy'] != 'fewer' else r['budget']} | "
                     f"{r['budget']} | {r['cfg']:g} | {r['animal']:.3f} | {r['position']:.3f} | {r['size']:.3f} | "
                     f"{r['all']:.3f} | {r['fd']:.2f} | {pair} |")
    lines.append("\nPaired columns: each image against the vanilla N-step image of the same prompt and seed "
                 "(`fewer` shares the seed, not the noise).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
