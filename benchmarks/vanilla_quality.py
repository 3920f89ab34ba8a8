"""Vanilla sampling quality of the shipped tiny-animals model: FD and class accuracy vs N.

Prints a markdown table and writes JSON. Also measures the two reference floors:
FD of VQ reconstructions of 1,000 training images, and of the real training images,
both against the validation set.

    python benchmarks/vanilla_quality.py --steps 2,4,8,16,32 --seeds 0,1,2 --num 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from migm import assets
from migm.data.animals import load_animals
from migm.evaluation.metrics import Evaluator
from migm.models.checkpoint import load_checkpoint
from migm.runtime.pipeline import Pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="2,4,8,16,32")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--guidance", "--cfg", type=float, default=None)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--base", default=None)
    ap.add_argument("--vq", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--json", default="benchmarks/results/vanilla_quality.json")
    args = ap.parse_args()

    pipe = Pipeline.from_checkpoints(args.base, args.vq)
    vq = load_checkpoint(args.vq or assets.VQ)
    classifier = load_checkpoint(args.classifier or assets.CLASSIFIER)
    train, val = load_animals("train"), load_animals("val")
    evaluate = Evaluator(classifier, val.images)

    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train.images), generator=g)[: args.num]
    real = train.images[pick]
    with torch.no_grad():
        recon = vq.decode(vq.encode(real))
    floors = {
        "real_train_vs_val": evaluate(real, train.labels[pick]),
        "vq_recon_train_vs_val": evaluate(recon, train.labels[pick]),
    }
    print(f"floors: real train images FD {floors['real_train_vs_val']['fd']:.2f}, "
          f"VQ reconstructions FD {floors['vq_recon_train_vs_val']['fd']:.2f} "
          f"(class acc {floors['vq_recon_train_vs_val']['class_acc']:.3f})")

    labels = [i % pipe.num_classes for i in range(args.num)]
    rows = []
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    d = pipe.defaults
    sampling = {"guidance": d.guidance if args.guidance is None else args.guidance,
                "tau": d.tau if args.tau is None else args.tau, "schedule": d.schedule}

    def write(summary=None):
        # rewritten after every run so an interrupted sweep keeps what it measured
        out.write_text(json.dumps({"floors": floors, "rows": rows, "summary": summary, "sampling": sampling,
                                   "torch": torch.__version__}, indent=2) + "\n")

    # seeds outermost: a sweep cut short still has every N for the seeds it finished
    for seed in [int(s) for s in args.seeds.split(",")]:
        for steps in [int(s) for s in args.steps.split(",")]:
            bar = tqdm(total=args.num * steps, desc=f"N={steps} seed={seed}", leave=False)
            t0 = time.perf_counter()
            images = pipe.generate(labels, steps=steps, guidance=args.guidance, tau=args.tau, seed=seed,
                                   batch_size=args.batch_size, progress=lambda i, n: bar.update(i - bar.n))
            seconds = time.perf_counter() - t0
            bar.close()
            m = evaluate(images, torch.tensor(labels))
            rows.append({"strategy": "vanilla", "steps": steps, "seed": seed, "fd": m["fd"],
                         "class_acc": m["class_acc"], "num": args.num, "seconds": seconds})
            print(f"N={steps:3d} seed={seed}: FD {m['fd']:.2f}  class acc {m['class_acc']:.3f}  ({seconds:.0f} s)",
                  flush=True)
            write()

    print("\n| N | FD (mean ± sd) | class acc (mean ± sd) |\n|---|---|---|")
    summary = []
    for steps in dict.fromkeys(r["steps"] for r in rows):
        fds = [r["fd"] for r in rows if r["steps"] == steps]
        accs = [r["class_acc"] for r in rows if r["steps"] == steps]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        summary.append({"steps": steps, "fd_mean": statistics.mean(fds), "fd_sd": sd(fds),
                        "class_acc_mean": statistics.mean(accs), "class_acc_sd": sd(accs), "seeds": len(fds)})
        print(f"| {steps} | {statistics.mean(fds):.2f} ± {sd(fds):.2f} | "
              f"{statistics.mean(accs):.3f} ± {sd(accs):.3f} |")
    write(summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
