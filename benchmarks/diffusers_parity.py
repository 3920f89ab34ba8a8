"""diffusers parity: a folder written by `save_pretrained`, loaded by diffusers itself and by migm,
gives the same tokens and images; `guidance_scale` s equals migm's guidance w = s - 1; the base's
calls and rows per step with guidance off (s = 1) and on (s > 1).

    python benchmarks/diffusers_parity.py --num 16 --out benchmarks/results/diffusers_parity.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import diffusers
import torch

import migm
from migm.runtime import Pipeline

ARGS = {"tiny-animals": lambda n: {"class_labels": [i % 10 for i in range(n)]},
        "tiny-scenes": lambda n: {"prompt": [("a small cat on the left", "a large zebra at the top",
                                              "a small dog at the bottom", "a large horse on the right")[i % 4]
                                             for i in range(n)]}}


def parity(name: str, n: int, budget: int, folder: Path) -> dict:
    Pipeline.from_pretrained(name).save_pretrained(folder)
    theirs = diffusers.DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True)
    ours = migm.MigmPipeline.from_pretrained(folder)
    outs = []
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
        outs.append(pipe(**ARGS[name](n), budget=budget, generator=gens, output_type="pt"))
    same = (outs[0].tokens == outs[1].tokens).float().mean().item()
    return {"model": name, "images": n, "budget": budget, "steps": ours.runtime.defaults.steps,
            "diffusers_class": f"{type(theirs).__module__}.{type(theirs).__name__}",
            "call": f"diffusers.DiffusionPipeline.from_pretrained({folder.name!r}, trust_remote_code=True)",
            "tokens_equal": same, "images_equal": bool(torch.equal(outs[0].images, outs[1].images))}


def guidance(n: int) -> list[dict]:
    pipe = Pipeline.from_pretrained("tiny-animals")
    rows: list[int] = []
    base = pipe.backend.base
    pipe.backend.base = lambda tokens, cond: (rows.append(len(tokens)), base(tokens, cond))[1]
    out = []
    for s in (1.0, 3.0, 4.0):
        rows.clear()
        a = pipe(class_labels=list(range(n)), guidance_scale=s, seed=7, output_type="pt")
        calls = list(rows)
        b = pipe.generate(classes=list(range(n)), guidance=s - 1, seed=7)
        steps = pipe.defaults.steps
        out.append({"guidance_scale": s, "migm_guidance_w": s - 1, "images_equal": bool(torch.equal(a.images, b)),
                    "base_calls_per_step": len(calls) / steps, "rows_per_call": sorted(set(calls)), "images": n})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/diffusers_parity.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = {"parity": [parity(name, args.num, b, Path(tmp) / name) for name, b in (("tiny-animals", 6),
                                                                                      ("tiny-scenes", 8))],
               "guidance": guidance(min(args.num, 10)), "diffusers": diffusers.__version__}
    print("| model | images | N | B | tokens equal | images equal |\n|---|---|---|---|---|---|")
    for r in res["parity"]:
        print(f"| {r['model']} | {r['images']} | {r['steps']} | {r['budget']} | {r['tokens_equal']:.0%} "
              f"| {r['images_equal']} |")
    print("\n| guidance_scale s | w = s - 1 | same images | base calls / step | rows / call |\n|---|---|---|---|---|")
    for r in res["guidance"]:
        print(f"| {r['guidance_scale']:g} | {r['migm_guidance_w']:g} | {r['images_equal']} | "
              f"{r['base_calls_per_step']:g} | {r['rows_per_call']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
