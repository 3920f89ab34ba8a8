"""The same bundle on two backends, same seed: share of identical tokens and FD of each.

    python benchmarks/backend_agreement.py --num 1000 --steps 16 --budget 6

Uses the default bundle (the shipped model, fp32, built into the cache on first use) unless
--engine is given. Both backends run on the CPU, so they draw the same random numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from migm import assets
from migm.data.animals import load_animals
from migm.evaluation.metrics import Evaluator
from migm.models.checkpoint import load_checkpoint
from migm.runtime import Pipeline
from migm.runtime.cache import default_bundle


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # migm logs what it builds or rebuilds
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=None)
    ap.add_argument("--backends", default="torch,ort")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--budgets", default="16,6", help="B per row (B = N: vanilla).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--json", default="benchmarks/results/backend_agreement.json")
    args = ap.parse_args()

    bundle = Path(args.engine) if args.engine else default_bundle()
    evaluate = Evaluator(load_checkpoint(assets.CLASSIFIER), load_animals("val").images)
    names = args.backends.split(",")
    pipes = {b: Pipeline.from_bundle(bundle, backend=b, device="cpu") for b in names}
    labels = [i % 10 for i in range(args.num)]
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        tokens = {}
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            tokens[name] = pipe.generate_tokens(labels, steps=args.steps, budget=budget, seed=args.seed,
                                                batch_size=args.batch_size)
            seconds = time.perf_counter() - t0
            score = evaluate(pipe.decode(tokens[name]), torch.tensor(labels))
            rows.append({"backend": name, "precision": pipe.backend.precision if name == "torch" else "fp32",
                         "steps": args.steps, "budget": budget, "num": args.num, "seed": args.seed,
                         "fd": score["fd"], "class_acc": score["class_acc"], "seconds": seconds,
                         "identical_tokens_vs_" + names[0]: float((tokens[name] == tokens[names[0]]).float().mean()),
                         "identical_images_vs_" + names[0]:
                             float((tokens[name] == tokens[names[0]]).all(1).float().mean())})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
