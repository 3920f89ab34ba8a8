"""Accuracy and speed of each bundle precision against FP32, on ONNX Runtime (CPU here).

For every precision (fp32, fp16, int8, best) a bundle of the shipped model is built (or
reused) and sampled with hybrid sampling (shortcut strategy, N and B below) with ONNX
Runtime sessions for the base model, the shortcut and the decoder, same seed for all:

  feature error     rel. L2 of each component's first output vs the FP32 graph, on the
                    calibration-style inputs of the bundle (base: real token states)
  token agreement   share of tokens equal to the FP32 bundle's, over whole generations
  FD / class acc    of the decoded images, against the validation split
  speed             ms per call of each component at the sampling batch (ratio to FP32)

    python benchmarks/precision.py --num 1000 --steps 16 --budget 6
    python benchmarks/precision.py --speed-only     # component timing alone, interleaved

The ms/call recorded during sampling shares the machine with everything else running;
--speed-only times each component by itself (same inputs for every precision, rounds
interleaved across precisions, median) at batch 2 and 200 (1 and 100 images with CFG).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from migm import assets
from migm.data.animals import load_animals
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import verify_bundle
from migm.engines.ort import ort_session
from migm.evaluation.metrics import Evaluator
from migm.models.checkpoint import load_checkpoint
from migm.sampling.config import SamplerConfig
from migm.sampling.loop import generate_tokens


class OrtModels:
    """The bundle's ONNX components as the callables the sampling loop takes."""

    cached = None  # no mlcache

    def __init__(self, bundle: Path, head):
        doc = verify_bundle(bundle).to_dict()  # the JSON view, as recorded
        self.doc, self.head = doc, head
        self.sessions = {name: ort_session(bundle / e["file"]) for name, e in doc["components"].items()}
        self.times = {name: 0.0 for name in self.sessions}
        self.calls = {name: 0 for name in self.sessions}

    def _run(self, name, feeds):
        t = time.perf_counter()
        out = self.sessions[name].run(None, {k: v.numpy() for k, v in feeds.items()})
        self.times[name] += time.perf_counter() - t
        self.calls[name] += 1
        return [torch.from_numpy(o) for o in out]

    def base(self, tokens, labels):
        return tuple(self._run("base", {"tokens": tokens, "labels": labels}))

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, cond=None):
        return self._run("shortcut", {"features": features.float(), "new_pos": new_pos, "new_tok": new_tok,
                                      "key_mask": key_mask, "mask_ratio": mask_ratio.float()})[0], None

    def decode(self, tokens):
        g = self.doc["spec"]["grid"]
        return self._run("decoder", {"tokens": tokens.view(-1, g, g)})[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", default="fp32,fp16,int8,best")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--bundles", default="migm-out/bundles", help="Where the bundles are built (reused if present).")
    ap.add_argument("--json", default="benchmarks/results/precision.json")
    ap.add_argument("--speed-only", action="store_true", help="Time the components of existing bundles only.")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if args.speed_only:
        return speed_only(args)

    base = load_checkpoint(assets.BASE)
    head = base.head
    sampler = SamplerConfig.from_dict(base.meta["sampling"]).replace(steps=args.steps)
    c = base.cfg
    evaluate = Evaluator(load_checkpoint(assets.CLASSIFIER), load_animals("val").images)
    labels = torch.tensor([i % c.num_classes for i in range(args.num)])
    rows, ref_tokens, ref_outputs = [], None, {}
    probe_g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, c.codebook_size, (8, c.num_tokens), generator=probe_g)
    probe = {"base": {"tokens": torch.where(torch.rand(8, c.num_tokens, generator=probe_g) < 0.6,
                                            torch.tensor(c.mask_id), codes),
                      "labels": torch.arange(8) % (c.num_classes + 1)}}
    for precision in args.precisions.split(","):
        path = Path(args.bundles) / f"{precision}.plan"
        if not path.exists():
            build_bundle(path, BuildSettings(precision=precision, backend="ort"), assets.BASE, assets.VQ,
                         assets.SHORTCUT)
        m = OrtModels(path, lambda f: head(f.float()))
        g = torch.Generator().manual_seed(args.seed)
        chunks = []
        t0 = time.perf_counter()
        for start in range(0, args.num, args.batch_size):
            chunks.append(generate_tokens(
                m, labels[start:start + args.batch_size], torch.tensor([c.no_class_id]), sampler,
                num_tokens=c.num_tokens, mask_id=c.mask_id, budget=args.budget, strategy="shortcut", generator=g))
        seconds = time.perf_counter() - t0
        tokens = torch.cat(chunks)
        with torch.no_grad():
            images = torch.cat([m.decode(tokens[i:i + 500]) for i in range(0, len(tokens), 500)])
        score = evaluate(images, labels)
        outs = {"base": m.base(**probe["base"])[0]}
        if ref_tokens is None:
            ref_tokens = tokens
            # shortcut and decoder probes built from the FP32 base's real features
            masked = probe["base"]["tokens"] == c.mask_id
            pos = torch.sort((~masked).to(torch.int8), dim=1, stable=True).indices[:, :8]
            probe["shortcut"] = {"features": outs["base"], "new_pos": pos,
                                 "new_tok": torch.randint(0, c.codebook_size, pos.shape, generator=probe_g),
                                 "key_mask": torch.ones(pos.shape, dtype=torch.bool),
                                 "mask_ratio": masked.float().mean(1)}
            probe["decoder"] = torch.randint(0, c.codebook_size, (8, c.num_tokens), generator=probe_g)
        outs["shortcut"] = m.shortcut(**probe["shortcut"])[0]
        outs["decoder"] = m.decode(probe["decoder"])
        outs = {k: v.numpy() for k, v in outs.items()}
        if not ref_outputs:
            ref_outputs = outs
        row = {"precision": precision, "steps": args.steps, "budget": args.budget, "num": args.num,
               "fd": score["fd"], "class_acc": score["class_acc"],
               "token_agreement": float((tokens == ref_tokens).float().mean()),
               "rel_err": {k: float(np.linalg.norm(outs[k] - ref_outputs[k]) / np.linalg.norm(ref_outputs[k]))
                           for k in outs},
               "components": {n: e["precision"] for n, e in m.doc["components"].items()},
               "ms_per_call": {n: 1000 * m.times[n] / max(m.calls[n], 1) for n in m.times},
               "seconds": seconds}
        rows.append(row)
        print(f"{precision:5s} FD {row['fd']:.2f} acc {row['class_acc']:.3f} token agreement "
              f"{row['token_agreement']:.3f} rel err {', '.join(f'{k} {v:.1e}' for k, v in row['rel_err'].items())} "
              f"ms/call {', '.join(f'{k} {v:.1f}' for k, v in row['ms_per_call'].items())}", flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def speed_only(args):
    """Median ms per call of each component per precision, rounds interleaved; ratio to fp32."""
    precisions = args.precisions.split(",")
    models = {p: OrtModels(Path(args.bundles) / f"{p}.plan", None) for p in precisions}
    c = load_checkpoint(assets.BASE).cfg
    g = torch.Generator().manual_seed(0)
    out = {}
    for rows in (2, 200):
        tokens = torch.randint(0, c.codebook_size, (rows, c.num_tokens), generator=g)
        tokens[:, ::2] = c.mask_id
        labels = torch.arange(rows) % (c.num_classes + 1)
        feats = models[precisions[0]].base(tokens, labels)[0]
        m = c.num_tokens // args.steps
        pos = torch.stack([torch.randperm(c.num_tokens, generator=g)[:m] for _ in range(rows)])
        sc = dict(features=feats, new_pos=pos, new_tok=torch.randint(0, c.codebook_size, pos.shape, generator=g),
                  key_mask=torch.ones(pos.shape, dtype=torch.bool), mask_ratio=torch.full((rows,), 0.5))
        calls = {"base": lambda mm: mm.base(tokens, labels), "shortcut": lambda mm: mm.shortcut(**sc),
                 "decoder": lambda mm: mm.decode(tokens[: rows // 2].clamp(max=c.codebook_size - 1))}
        times = {(p, k): [] for p in precisions for k in calls}
        for r in range(args.rounds + 1):
            for p in precisions:
                for k, fn in calls.items():
                    t = time.perf_counter()
                    fn(models[p])
                    if r:  # round 0 warms up
                        times[(p, k)].append(1000 * (time.perf_counter() - t))
        for p in precisions:
            for k in calls:
                ms = statistics.median(times[(p, k)])
                ref = statistics.median(times[(precisions[0], k)])
                out.setdefault(p, {}).setdefault(str(rows), {})[k] = {"ms": ms, "speed_vs_fp32": ref / ms}
                print(f"rows {rows:3d} {p:5s} {k:8s} {ms:8.2f} ms  speed vs {precisions[0]} {ref / ms:.2f}x")
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.exists() else []
    for row in rows:
        if row["precision"] in out:
            row["component_speed"] = out[row["precision"]]
    path.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
