"""Pick the shipped model's sampling defaults: FD and class accuracy over a grid of
guidance weights w and confidence-noise temperatures tau (one seed, a few hundred images).

    python benchmarks/tune_sampling.py --base runs/base --vq runs/vq --classifier runs/classifier
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from migm import assets
from migm.data.animals import load_animals
from migm.evaluation.metrics import Evaluator
from migm.models.checkpoint import load_checkpoint
from migm.runtime.pipeline import Pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guidance", "--cfg", default="0,1,3")
    ap.add_argument("--tau", default="1,4.5")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--base", default=None)
    ap.add_argument("--vq", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--json", default="benchmarks/results/tune_sampling.json")
    args = ap.parse_args()

    pipe = Pipeline.from_checkpoints(args.base, args.vq)
    evaluate = Evaluator(load_checkpoint(args.classifier or assets.CLASSIFIER), load_animals("val").images)
    labels = [i % pipe.num_classes for i in range(args.num)]
    rows = []
    print("| w | tau | FD | class acc |\n|---|---|---|---|")
    weights, taus = [float(v) for v in args.guidance.split(",")], [float(v) for v in args.tau.split(",")]
    for w, tau in itertools.product(weights, taus):
        images = pipe.generate(labels, steps=args.steps, guidance=w, tau=tau, seed=0, batch_size=300)
        m = evaluate(images, torch.tensor(labels))
        rows.append({"cfg": w, "tau": tau, "steps": args.steps, "num": args.num, **m})
        print(f"| {w} | {tau} | {m['fd']:.2f} | {m['class_acc']:.3f} |", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
