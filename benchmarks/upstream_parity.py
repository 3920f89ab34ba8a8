"""Side by side with the upstream code (Kaiwen-Zhu/MIGM-Shortcut), on the same random weights.

    git clone https://github.com/Kaiwen-Zhu/MIGM-Shortcut /tmp/upstream-src    # outside this repository
    git -C /tmp/upstream-src checkout 93349c4                                   # the commit compared against
    python benchmarks/upstream_parity.py --upstream /tmp/upstream-src           # ~5 min of 2 CPU cores per seed

Nothing upstream is copied here: its modules are imported at run time from --upstream
(MaskGIT-Shortcut/: Trainer/vit.py `MaskGIT.sample_shortcut`, Network/transformer.py
`MaskTransformer`, Network/shortcut_model.py `MaskGITShortcut`; DiMOO-Shortcut/:
generators/image_generation_generator.py `generate_image` and `generate_image_shortcut`,
model/modeling_xllmx_dimoo.py `LLaDAForMultiModalGeneration`, model/shortcut_model.py
`MDMShortcut`). migm never imports this script.

What it does
  1. builds each upstream model at a reduced size with random weights, writes its state dict in the
     released layout (MaskGIT: the `model_state_dict` / shortcut .pth; DiMOO: a model.safetensors of
     `model.transformer.*` keys / shortcut .pth) and loads it with migm's loaders;
  2. samples with both, deterministically: upstream's categorical sample becomes an argmax and its
     Gumbel confidence noise zero (MaskGIT), or temperature 0 (DiMOO: argmax and no noise, by its own
     code); migm's Gumbel noise is zero and tau = 0. Vanilla and hybrid (shortcut) sampling, several
     (N, B); the share of identical tokens, and the first step where the revealed sets differ;
  3. runs each upstream shortcut and migm's loaded copy on the same inputs (also at the released
     MaskGIT-Shortcut dimensions, and DiMOO at its full 64x64 grid): relative error in fp32.

Upstream's CUDA-only calls are neutralised on the CPU by patching, inside this process only:
torch.cuda.Event / synchronize (timing), torch.amp.autocast('cuda') (a no-op: everything runs in fp32),
and the optional training imports its modules make at the top (omegaconf, torchvision, webdataset,
tensorboard, pytorch_lightning, einops) are stubbed when they are not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import io
import json
import math
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

import migm.sampling.kernel as mkernel
import migm.sampling.loop as mloop
from migm.models.llada import LLaDAConfig
from migm.models.loaders import halton_to_maskgit, load_dimoo, load_dimoo_shortcut, load_maskgit_shortcut
from migm.models.maskgit import MaskGITConfig
from migm.models.vqvae import VQVAE, VQConfig
from migm.runtime import Pipeline
from migm.sampling.config import SamplerConfig

torch.set_grad_enabled(False)

# ---------------------------------------------------------------- importing the upstream code on a CPU

_OPTIONAL = ("omegaconf", "torchvision", "webdataset", "tensorboard", "pytorch_lightning", "einops")


class _Stub(types.ModuleType):
    """A module that is not installed: any attribute is an inert class (only the training code uses them)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def import_upstream(root: Path) -> SimpleNamespace:
    """The upstream modules this comparison calls, imported from the checkout at `root`."""
    missing = [m for m in _OPTIONAL if importlib.util.find_spec(m) is None]
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))
    if "tensorboard" in missing:  # torch.utils.tensorboard refuses to import without it
        stub = _Stub("torch.utils.tensorboard")
        sys.modules["torch.utils.tensorboard"] = stub
    mg, dm = root / "MaskGIT-Shortcut", root / "DiMOO-Shortcut"
    for d in (mg, dm):
        if not d.is_dir():
            raise SystemExit(f"--upstream {root}: no {d.name}/ there (give a checkout of Kaiwen-Zhu/MIGM-Shortcut)")
        sys.path.insert(0, str(d))
    global _VIT
    vit = _VIT = importlib.import_module("Trainer.vit")
    transformer = importlib.import_module("Network.transformer")
    mg_shortcut = importlib.import_module("Network.shortcut_model")
    generator = importlib.import_module("generators.image_generation_generator")
    dimoo = importlib.import_module("model")
    llada = importlib.import_module("model.modeling_llada")
    config = importlib.import_module("model.configuration_llada")
    dm_shortcut = importlib.import_module("model.shortcut_model")
    return SimpleNamespace(MaskGIT=vit.MaskGIT, MaskTransformer=transformer.MaskTransformer,
                           MaskGITShortcut=mg_shortcut.MaskGITShortcut, generator=generator,
                           LLaDAForMultiModalGeneration=dimoo.LLaDAForMultiModalGeneration,
                           LLaDAConfig=config.LLaDAConfig, MDMShortcut=dm_shortcut.MDMShortcut,
                           model_config=llada.create_model_config_from_pretrained_config, vit_module=vit)


_VIT = None  # upstream's Trainer.vit module, once imported


class _NoEvent:
    def __init__(self, *a, **k):
        pass

    def record(self, *a, **k):
        pass

    def elapsed_time(self, other):
        return 0.0


_autocast = torch.amp.autocast


def _cpu_autocast(device_type, *a, **k):
    return contextlib.nullcontext() if device_type == "cuda" else _autocast(device_type, *a, **k)


class _ArgmaxCategorical:
    """torch.distributions.Categorical whose sample is the most likely class."""

    def __init__(self, probs=None, logits=None, validate_args=None):
        self.p = probs if probs is not None else logits

    def sample(self, sample_shape=torch.Size()):
        return self.p.argmax(-1)


@contextlib.contextmanager
def upstream_patches():
    """Upstream on a CPU, deterministic: no CUDA timing or autocast, argmax sampling, zero Gumbel noise."""
    with contextlib.ExitStack() as st:
        st.enter_context(mock.patch.object(torch.cuda, "Event", _NoEvent))
        st.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
        st.enter_context(mock.patch.object(torch.amp, "autocast", _cpu_autocast))
        st.enter_context(mock.patch.object(torch.distributions, "Categorical", _ArgmaxCategorical))
        st.enter_context(mock.patch.object(np.random, "gumbel", lambda *a, size=None, **k: np.zeros(size)))
        if _VIT is not None:  # no progress bars from its schedule
            st.enter_context(mock.patch.object(_VIT, "tqdm", lambda it, **k: it))
        yield


def _zero_gumbel(shape, generator, device, dtype=torch.float32):
    return torch.zeros(shape, device=device, dtype=dtype)


@contextlib.contextmanager
def migm_patches(trace: list, ties: list):
    """migm deterministic (zero Gumbel noise); every step's revealed positions and codes are recorded in
    `trace`, and in `ties` whether a row's confidence at the reveal boundary is an exact tie (the last
    revealed and the first kept-masked position equal: then the tie-breaking of topk decides)."""
    real = mloop.sample_step

    def step(logits, tokens, mask_id, reveal, *a, **k):
        new, top = real(logits, tokens, mask_id, reveal, *a, **k)
        pos = top.sort(1).values
        trace.append(list(zip(pos, new.gather(1, pos))))
        conf = torch.log_softmax(logits.float(), -1).amax(-1).masked_fill(tokens != mask_id, float("-inf"))
        ranked = conf.sort(1, descending=True).values
        tie = ranked[:, reveal - 1] == ranked[:, reveal] if reveal < ranked.shape[1] else torch.zeros(len(conf))
        ties.append(tie.bool() & (ranked[:, min(reveal, ranked.shape[1] - 1)] > float("-inf")))
        return new, top

    with mock.patch.object(mkernel, "gumbel", _zero_gumbel), mock.patch.object(mloop, "sample_step", step):
        yield


# ---------------------------------------------------------------- random weights

def randomize(module: torch.nn.Module, seed: int, std: dict | None = None) -> None:
    """Random weights everywhere (also norms and biases, which upstream initialises to 1 / 0):
    matrices N(0, 1/fan_in), norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2); `std` by name."""
    g = torch.Generator().manual_seed(seed)
    std = std or {}
    for name, p in module.named_parameters():
        if name in std:
            p.copy_(torch.randn(p.shape, generator=g) * std[name])
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        elif torch.all(p == 1):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


SHORTCUT_OUT_SCALE = 0.2  # --shortcut-out-scale


def _shortcut_out(inner: int) -> dict:
    """A random shortcut's output projection at a fifth of the usual scale (by default): its update is then
    a fraction of the features, as a trained shortcut's is. At full scale (1) the features grow at every
    chained shortcut step, the logits get so peaked that float32 probabilities round to 1 minus a few ulps,
    and confidences tie exactly (topk, or upstream MaskGIT's `conf >= threshold`, then decides)."""
    return {"proj_out.weight": SHORTCUT_OUT_SCALE / math.sqrt(inner), "proj_out.bias": 0.1 * SHORTCUT_OUT_SCALE}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def vq_for(codebook_size: int, grid: int) -> VQVAE:
    """A small VQ-VAE of the right codebook and grid: the pipeline needs one (tokens are compared, not images)."""
    return VQVAE(VQConfig(image_size=2 * grid, n_down=1, width=8, codebook_size=codebook_size, code_dim=4))


def first_divergence(up: list, mi: list) -> int | None:
    """The first step whose revealed positions or codes differ (any row), None if all agree. A trace is a
    list over steps of a list over rows of (positions revealed, in increasing order; their codes)."""
    for i, (a, b) in enumerate(zip(up, mi)):
        if any(p1.shape != p2.shape or not (torch.equal(p1, p2) and torch.equal(c1, c2))
               for (p1, c1), (p2, c2) in zip(a, b)):
            return i
    return None if len(up) == len(mi) else min(len(up), len(mi))


# ---------------------------------------------------------------- MaskGIT (Halton-MaskGIT + MaskGIT-Shortcut)

@dataclass
class MGSize:
    grid: int = 32  # 1,024 tokens as the released model
    codebook: int = 1024
    classes: int = 10
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp: int = 128
    sc_heads: int = 4
    images: int = 4
    guidance: float = 3.0


def build_maskgit(U, s: MGSize, work: Path, seed: int):
    """Upstream MaskTransformer + MaskGITShortcut (random weights, dropout 0, eval) and migm's loaded copies."""
    torch.manual_seed(seed)
    vit = U.MaskTransformer(img_size=16 * s.grid, hidden_dim=s.width, codebook_size=s.codebook, f_factor=s.grid,
                            depth=s.depth, heads=s.heads, mlp_dim=s.mlp, dropout=0.0, nclass=s.classes)
    # logits = features @ tok_emb.T: std ~1.6 at this width (peaky logits would give probabilities of
    # exactly 1.0 in float32, i.e. confidence ties)
    randomize(vit, seed, {"tok_emb.weight": 0.2, "pos_emb": 0.1, "bias": 0.5})
    vit.eval()
    sc = U.MaskGITShortcut(hidden_dim=s.width, n_block=1, embed_t=True, bottleneck_ratio=2, tok_emb=vit.tok_emb,
                           pos_emb=vit.pos_emb, num_heads=s.sc_heads, dropout=0.0)
    randomize(sc, seed + 1, _shortcut_out(s.width // 2))
    sc.eval()
    path = work / "maskgit-shortcut.pth"
    torch.save(sc.state_dict(), path)
    cfg = MaskGITConfig(codebook_size=s.codebook, num_classes=s.classes, grid=s.grid, width=s.width, depth=s.depth,
                        heads=s.heads, mlp=s.mlp)
    base = halton_to_maskgit({k: v.clone() for k, v in vit.state_dict().items()}, cfg, "upstream MaskTransformer")
    msc = load_maskgit_shortcut(path, base, heads=s.sc_heads)
    return vit, sc, base, msc


def upstream_maskgit(U, vit, sc, s: MGSize, labels, steps, budget, shortcut):
    """Upstream `MaskGIT.sample_shortcut` (its own object, without the VQGAN and data). Returns tokens [b, L]
    (None if it failed), the trace, its ties [steps, b] (rows where `conf >= threshold` held for more than t
    positions, so it revealed extra tokens) and its error message, if any."""
    trainer = U.MaskGIT.__new__(U.MaskGIT)
    trainer.args = SimpleNamespace(device="cpu", mask_value=s.codebook)
    trainer.vit, trainer.patch_size, trainer.codebook_size = vit, s.grid, s.codebook
    trainer.ae = SimpleNamespace(decode_code=lambda code: code.clone())
    real_topk, ties = torch.topk, []

    def topk(x, k, *a, **kw):  # its only topk: the reveal threshold
        out = real_topk(x, k, *a, **kw)
        ties.append((x >= out.values[:, -1:]).sum(1) > int(k))
        return out

    error, code = None, None
    with upstream_patches(), mock.patch.object(torch, "topk", topk):
        try:
            code, l_codes, l_mask, _ = trainer.sample_shortcut(
                nb_sample=len(labels), labels=labels.clone(), sm_temp=1, w=s.guidance, randomize="linear",
                r_temp=4.5, sched_mode="arccos", step=steps, use_shortcut=shortcut,
                shortcut_model=sc if shortcut else None, budget=budget)
        except RuntimeError as e:  # a tie on a shortcut run: its new tokens no longer .view(B, -1)
            error = f"step {len(ties) - 1}: {e}"
    vit.eval()  # sample_shortcut leaves it in train mode
    if code is None:
        return None, [], torch.stack(ties), error
    b = len(labels)
    trace, prev = [], torch.ones(b, s.grid * s.grid, dtype=torch.bool)
    for codes, mask in zip(l_codes, l_mask):
        mask = mask.view(b, -1).bool()
        new = prev & ~mask  # revealed at this step
        trace.append([(torch.nonzero(n).flatten(), c[n]) for n, c in zip(new, codes.view(b, -1))])
        prev = mask
    return code.view(b, -1), trace, torch.stack(ties), None


def migm_run(pipe, sampler, budget, strategy, **cond):
    trace, ties = [], []
    with migm_patches(trace, ties):
        tokens = pipe.generate_tokens(**cond, sampler=sampler, budget=budget, strategy=strategy, seed=0)
    return tokens, trace, torch.stack(ties)


def maskgit_forward_check(s: MGSize, sc, msc, seed: int, rows: int = 4, new: int = 100) -> dict:
    """Upstream MaskGITShortcut vs migm's loaded copy on the same random inputs."""
    g = torch.Generator().manual_seed(seed)
    L = s.grid * s.grid
    feats = torch.randn(rows, L + 1, s.width, generator=g)
    pos = torch.stack([torch.randperm(L, generator=g)[:new].sort().values for _ in range(rows)])
    ids = torch.randint(0, s.codebook, (rows, new), generator=g)
    fmap = torch.zeros(rows, L + 1, dtype=torch.bool).scatter(1, pos, True)
    ratio = torch.rand(rows, generator=g)
    with upstream_patches():
        ref = sc(feats, ids, fmap, ratio)
    out = msc(feats, pos, ids, torch.ones_like(ids, dtype=torch.bool), ratio)
    return {"rel_err": rel_err(out, ref), "max_abs": float((out - ref).abs().max()),
            "delta_rel_err": rel_err(out - feats, ref - feats)}


def distinct_runs(settings):
    """(N, B, strategy) for each (N, B): vanilla N once however many budgets share it, then the shortcut."""
    done = set()
    for steps, budget in settings:
        for strategy in ("vanilla", "shortcut"):
            key = (steps, budget if strategy == "shortcut" else steps)
            if key not in done:
                done.add(key)
                yield steps, budget, strategy


def run_maskgit(U, work: Path, settings, seeds, log, classes=None) -> tuple[list, list]:
    s = MGSize()
    rows, forward = [], []
    for seed in seeds:
        vit, sc, base, msc = build_maskgit(U, s, work, seed)
        fwd = maskgit_forward_check(s, sc, msc, seed)
        forward.append({"family": "maskgit", "seed": seed, "dims": f"sampling model: d {s.width}, inner "
                        f"{s.width // 2}, {s.sc_heads} heads, {s.grid * s.grid + 1} positions", **fwd})
        log(json.dumps(forward[-1]))
        pipe = Pipeline.from_models(base, vq_for(s.codebook, s.grid), msc, precision="fp32")
        labels = torch.randint(0, s.classes, (s.images,), generator=torch.Generator().manual_seed(seed))
        if classes:
            labels = torch.tensor(classes)
        for steps, budget, strategy in distinct_runs(settings):
            hybrid = strategy == "shortcut"
            t0 = time.perf_counter()
            up, up_trace, up_ties, error = upstream_maskgit(U, vit, sc, s, labels, steps, budget, hybrid)
            t1 = time.perf_counter()
            sampler = SamplerConfig(steps=steps, schedule="arccos", sampler="halton", temperature=1.0, tau=0.0,
                                    guidance=s.guidance)
            mi, mi_trace, ties = migm_run(pipe, sampler, budget, strategy, classes=labels.tolist())
            t2 = time.perf_counter()
            rows.append(_row("maskgit", seed, steps, budget if hybrid else steps, strategy, up, mi, up_trace,
                             mi_trace, up_ties, ties, error, fwd["rel_err"] if hybrid else None, t1 - t0, t2 - t1))
            log(json.dumps(rows[-1]))
    # the released MaskGIT-Shortcut dimensions (width 768, 16 heads, 1,024 + 1 positions, 2,026 embeddings)
    big = MGSize(grid=32, codebook=1024, classes=1000, width=768, depth=1, heads=16, mlp=3072, sc_heads=16)
    vit, sc, base, msc = build_maskgit(U, big, work, 100)
    forward.append({"family": "maskgit", "seed": 100,
                    "dims": "released: d 768, inner 384, 16 heads, 1025 positions, vocab 2026",
                    **maskgit_forward_check(big, sc, msc, 100)})
    log(json.dumps(forward[-1]))
    return rows, forward


def _row(family, seed, steps, budget, strategy, up, mi, up_trace, mi_trace, up_ties, mi_ties, error, fwd, t_up,
         t_mi) -> dict:
    """One comparison. A tie: a row whose confidence at the reveal boundary is shared by a revealed and a
    still-masked position (upstream MaskGIT's `conf >= threshold` then reveals both; elsewhere topk's
    tie-breaking decides), counted on each side with that side's own confidences."""
    row = {"family": family, "seed": seed, "N": steps, "B": budget, "strategy": strategy, "images": int(mi.shape[0]),
           "tokens": int(mi.numel()), "token_agreement": None, "identical_images": None, "first_divergent_step": None,
           "tie_at_divergence": None, "ties_upstream": int(up_ties.sum()), "ties_migm": int(mi_ties.sum()),
           "upstream_error": error, "shortcut_forward_rel_err": fwd,
           "seconds_upstream": round(t_up, 2), "seconds_migm": round(t_mi, 2)}
    if up is None:  # upstream failed: say where, and whether a tie did it
        step = len(up_ties) - 1
        row.update(first_divergent_step=step, tie_at_divergence=bool(up_ties[step].any()))
        return row
    same = up == mi
    first = first_divergence(up_trace, mi_trace)
    tie = None if first is None else bool(up_ties[first].any() or mi_ties[first].any())
    row.update(token_agreement=float(same.float().mean()), identical_images=int(same.all(1).sum()),
               first_divergent_step=first, tie_at_divergence=tie)
    return row


# ---------------------------------------------------------------- Lumina-DiMOO (LLaDA + DiMOO-Shortcut)

@dataclass
class DMSize:
    grid: int = 32  # 1,024 tokens: the smallest grid where N = 64 reveals a token at every step
    codebook: int = 256
    text_vocab: int = 256  # special ids: migm's defaults (the last ids of the text vocabulary)
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp: int = 176
    rope_theta: float = 500000.0  # Lumina-DiMOO's (LLaDA-8B's)
    max_text: int = 24
    prompt_lengths: tuple = (20, 9)  # one prompt per upstream call (its generator is batch-1 only)
    guidance: float = 4.0  # Lumina-DiMOO's default cfg_scale

    def config(self) -> LLaDAConfig:
        g = torch.Generator().manual_seed(1234)
        uncond = torch.randint(0, self.text_vocab - 16, (14,), generator=g).tolist()  # 14 ids as Lumina-DiMOO's
        return LLaDAConfig(text_vocab=self.text_vocab, codebook_size=self.codebook, grid=self.grid, width=self.width,
                           depth=self.depth, heads=self.heads, mlp=self.mlp, max_text=self.max_text,
                           rope_theta=self.rope_theta, uncond_ids=uncond)


def build_dimoo(U, s: DMSize, work: Path, seed: int):
    """Upstream LLaDAForMultiModalGeneration + MDMShortcut (random weights, eval), and migm's loaded copies
    (through load_dimoo / load_dimoo_shortcut, from a model.safetensors and a .pth in the released layouts)."""
    mc = s.config()
    vocab = mc.vocab
    seq = s.max_text + 4 + s.grid * (s.grid + 1) + 64
    lc = U.LLaDAConfig(d_model=s.width, n_heads=s.heads, n_layers=s.depth, mlp_hidden_size=s.mlp,
                       activation_type="silu", block_type="llama", rope=True, rope_theta=s.rope_theta,
                       rope_full_precision=True, layer_norm_type="rms", rms_norm_eps=mc.norm_eps, include_bias=False,
                       include_qkv_bias=False, weight_tying=False, vocab_size=vocab, embedding_size=vocab,
                       max_sequence_length=seq, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
                       flash_attention=False, init_device="cpu", block_group_size=1, alibi=False,
                       mask_token_id=mc.mask_token, pad_token_id=mc.pad_id, eos_token_id=mc.pad_id)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its whole config
        model = U.LLaDAForMultiModalGeneration(lc).float()
    randomize(model, seed, {"model.transformer.wte.weight": 1.0})
    model.eval()
    sc = U.MDMShortcut(U.model_config(lc), n_block=1, embed_t=True, bottleneck_ratio=2)
    randomize(sc, seed + 1, _shortcut_out(s.width // 2))
    sc.eval()
    d = work / f"dimoo-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    torch.save(sc.state_dict(), d / "dimoo-shortcut.pth")
    base = load_dimoo(d, mc, dtype=torch.float32)
    msc = load_dimoo_shortcut(d / "dimoo-shortcut.pth", base).float()
    return model, sc, base, msc, mc


def _image_part(mc: LLaDAConfig) -> list[int]:
    """<boa> <boi>, the masked grid with a newline after every row, <eoi> <eoa> (Lumina-DiMOO's layout)."""
    rows = ([mc.mask_token] * mc.grid + [mc.eol_id]) * mc.grid
    return [mc.boa_id, mc.boi_id] + rows + [mc.eoi_id, mc.eoa_id]


def upstream_dimoo(U, model, sc, mc: LLaDAConfig, s: DMSize, prompt: list[int], steps, budget, shortcut):
    """Upstream generate_image (vanilla) or generate_image_shortcut, temperature 0: tokens [1, L], the trace,
    and its ties [steps, 1] (the keep_n-th lowest confidence equals the next: its topk picks which stays masked)."""
    ids = torch.tensor([prompt + _image_part(mc)])
    trace, ties, state = [], [], {"masked": torch.arange(mc.num_tokens)}
    gen = U.generator
    real_sample, real_keep = gen.gumbel_max_sample, gen.mask_by_random_topk

    def sample(logits, tau, **k):
        out = real_sample(logits, tau, **k)
        state["sampled"] = out[0]
        return out

    def keep(n, conf, **k):
        sel = real_keep(n, conf, **k)
        ranked = torch.log(conf[0].clamp_min(1e-20)).sort().values  # its confidence (temperature 0: no noise)
        kept = int(n)
        ties.append(torch.tensor([0 < kept < len(ranked) and bool(ranked[kept - 1] == ranked[kept])]))
        masked = state["masked"]
        trace.append((masked[~sel[0]], state["sampled"][~sel[0]]))
        state["masked"] = masked[sel[0]]
        return sel

    kw = dict(seq_len=mc.num_tokens, newline_every=mc.grid, timesteps=steps, mask_token_id=mc.mask_token,
              newline_id=mc.eol_id, temperature=0.0, cfg_scale=s.guidance, uncon_ids=torch.tensor([mc.uncond_ids]),
              code_start=len(prompt) + 2, codebook_size=mc.codebook_size, text_vocab_size=mc.text_vocab)
    with upstream_patches(), mock.patch.object(gen, "gumbel_max_sample", sample), \
            mock.patch.object(gen, "mask_by_random_topk", keep):
        if shortcut:
            out = gen.generate_image_shortcut(model, ids, use_shortcut=True, budget=budget, shortcut_model=sc, **kw)
        else:
            out = gen.generate_image(model, ids, **kw)
    return out - mc.text_vocab, trace, torch.stack(ties)


def dimoo_forward_check(model, sc, msc, mc: LLaDAConfig, seed: int, prompt_len: int,
                        new: int = 200) -> dict:
    """Upstream MDMShortcut vs migm's loaded copy on the same inputs: the conditional branch (keys: the
    prompt and the new image tokens) and the unconditional one (sequence <uncondition> prompt + image part,
    keys: the new image tokens only), as upstream's sampler calls it; migm's prompts left-padded."""
    g = torch.Generator().manual_seed(seed)
    L = mc.num_tokens
    prompt = torch.randint(0, mc.text_vocab - 16, (prompt_len,), generator=g)
    new_pos = torch.randperm(L, generator=g)[:new].sort().values
    codes = torch.randint(0, mc.codebook_size, (new,), generator=g)
    ratio = torch.rand(1, generator=g)
    slots = mc.image_slots - mc.max_text  # image positions after the prompt
    wte = model.model.transformer.wte
    out = {}
    uncond = torch.tensor(mc.uncond_ids)
    for branch, text in (("cond", prompt), ("uncond", uncond)):
        t = len(text) + 4 + L + mc.grid
        feats = torch.randn(1, t, mc.width, generator=g)
        fmap = torch.zeros(1, t, dtype=torch.bool)
        fmap[0, len(text) + slots[new_pos]] = True
        seq = torch.full((t,), mc.mask_token)
        seq[: len(text)] = text
        seq[len(text) + slots[new_pos]] = codes + mc.text_vocab
        if branch == "cond":
            fmap[0, : len(text)] = True  # upstream: every prompt position is a key on the conditional branch
        with upstream_patches():
            ref = sc(feats, wte(seq[fmap[0]])[None], fmap, ratio)
        lead = mc.max_text - len(text)
        padded = torch.cat([torch.randn(1, lead, mc.width, generator=g), feats], 1)
        row = torch.full((1, mc.max_text), mc.pad_id)
        row[0, lead:] = text
        got = msc(padded, new_pos[None], codes[None], torch.ones(1, new, dtype=torch.bool), ratio, row)[:, lead:]
        out[branch] = {"rel_err": rel_err(got, ref), "max_abs": float((got - ref).abs().max()),
                       "delta_rel_err": rel_err(got - feats, ref - feats)}
    return {"rel_err": max(v["rel_err"] for v in out.values()), "max_abs": max(v["max_abs"] for v in out.values()),
            "delta_rel_err": max(v["delta_rel_err"] for v in out.values()), "branches": out}


def run_dimoo(U, work: Path, settings, seeds, log) -> tuple[list, list]:
    s = DMSize()
    rows, forward = [], []
    for seed in seeds:
        model, sc, base, msc, mc = build_dimoo(U, s, work, seed)
        fwd = dimoo_forward_check(model, sc, msc, mc, seed, prompt_len=s.prompt_lengths[0])
        forward.append({"family": "dimoo", "seed": seed, "dims": f"sampling model: d {s.width}, inner "
                        f"{s.width // 2}, {s.heads} heads, grid {s.grid}x{s.grid}", **fwd})
        log(json.dumps(forward[-1]))
        pipe = Pipeline.from_models(base, vq_for(s.codebook, s.grid), msc, precision="fp32")
        g = torch.Generator().manual_seed(seed)
        prompts = [torch.randint(0, s.text_vocab - 16, (n,), generator=g).tolist() for n in s.prompt_lengths]
        padded = torch.full((len(prompts), s.max_text), mc.pad_id)
        for i, p in enumerate(prompts):
            padded[i, s.max_text - len(p):] = torch.tensor(p)
        for steps, budget, strategy in distinct_runs(settings):
            hybrid = strategy == "shortcut"
            t0 = time.perf_counter()
            runs = [upstream_dimoo(U, model, sc, mc, s, p, steps, budget, hybrid) for p in prompts]
            up = torch.cat([r[0] for r in runs])
            up_trace = [[r[1][i] for r in runs] for i in range(len(runs[0][1]))]  # steps, then rows
            up_ties = torch.cat([r[2] for r in runs], 1)
            t1 = time.perf_counter()
            sampler = SamplerConfig(steps=steps, schedule="dimoo", sampler="dimoo", temperature=1.0, tau=0.0,
                                    guidance=s.guidance)
            mi, mi_trace, ties = migm_run(pipe, sampler, budget, strategy, prompts=padded)
            t2 = time.perf_counter()
            rows.append(_row("dimoo", seed, steps, budget if hybrid else steps, strategy, up, mi, up_trace,
                             mi_trace, up_ties, ties, None, fwd["rel_err"] if hybrid else None, t1 - t0, t2 - t1))
            log(json.dumps(rows[-1]))
    # the real 64x64 grid (4,096 image tokens, 4,164 + prompt positions, RoPE theta 5e5) at a wider shortcut
    big = DMSize(grid=64, width=512, heads=8, mlp=1376, max_text=24)
    model, sc, base, msc, mc = build_dimoo(U, big, work, 100)
    forward.append({"family": "dimoo", "seed": 100,
                    "dims": "grid 64x64 (4,096 tokens, 4,192 positions), d 512, inner 256, 8 heads",
                    **dimoo_forward_check(model, sc, msc, mc, 100, prompt_len=20, new=400)})
    log(json.dumps(forward[-1]))
    return rows, forward


# ---------------------------------------------------------------- report

def _summary(group: list) -> dict:
    """Rows of the same (family, N, B, strategy) over the seeds."""
    ran = [r for r in group if r["token_agreement"] is not None]
    tokens = sum(r["tokens"] for r in ran)
    agree = sum(r["token_agreement"] * r["tokens"] for r in ran) / tokens if tokens else None
    div = [r for r in group if r["first_divergent_step"] is not None]
    fwd = [r["shortcut_forward_rel_err"] for r in group if r["shortcut_forward_rel_err"] is not None]
    return {"seeds": len(group), "images": sum(r["images"] for r in ran), "agreement": agree,
            "identical": sum(r["identical_images"] for r in ran), "divergent": len(div),
            "at_ties": sum(bool(r["tie_at_divergence"]) for r in div),
            "failed": [r["seed"] for r in group if r["upstream_error"]],
            "ties": (sum(r["ties_upstream"] for r in group), sum(r["ties_migm"] for r in group)),
            "fwd": max(fwd) if fwd else None}


def write_report(out: Path, rows: list, forward: list, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps({"meta": meta, "sampling": rows, "shortcut_forward": forward},
                                                indent=1) + "\n")
    lines = ["# Side by side with the upstream code", "",
             f"Upstream: {meta['upstream']} @ {meta['upstream_commit']}; migm @ {meta['migm_commit']}; torch "
             f"{meta['torch']}, fp32 on the CPU; seeds {', '.join(map(str, meta['seeds']))} (each seed: its own random "
             "weights, classes or prompts). Same weights on both sides: migm loads the upstream modules' state dicts "
             "with its loaders. Deterministic sampling: argmax tokens, no confidence noise.", "",
             "Token agreement: the share of identical tokens over the runs upstream completed. A divergence is a run "
             "whose revealed positions or codes differ at some step; *at a tie* when, at that step, a row's "
             "confidence at the reveal boundary was exactly tied on either side (the sampler's topk, or upstream "
             "MaskGIT's `conf >= threshold`, then decides which token is revealed). Ties counts every (step, row) "
             "with a tie at the boundary, upstream / migm, each with its own confidences.", "",
             "| family | N | B | strategy | seeds | images | token agreement | identical images | divergent runs "
             "(at a tie) | boundary ties up / migm | shortcut forward rel. error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["family"], r["N"], r["B"], r["strategy"]) for r in rows))
    for key in keys:
        m = _summary([r for r in rows if (r["family"], r["N"], r["B"], r["strategy"]) == key])
        agree = "—" if m["agreement"] is None else f"{100 * m['agreement']:.2f}%"
        fail = f"; upstream failed (seed {', '.join(map(str, m['failed']))})" if m["failed"] else ""
        fwd = "—" if m["fwd"] is None else f"{m['fwd']:.1e}"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {m['seeds']} | {m['images']} | {agree} | "
                     f"{m['identical']}/{m['images']} | {m['divergent']} ({m['at_ties']}){fail} | "
                     f"{m['ties'][0]} / {m['ties'][1]} | {fwd} |")
    failures = [r for r in rows if r["upstream_error"]]
    if failures:
        lines += ["", "Upstream failures:", ""]
        lines += [f"- {r['family']} N={r['N']} B={r['B']} seed {r['seed']}: {r['upstream_error']} "
                  f"({'a tie at that step' if r['tie_at_divergence'] else 'no tie at that step'})" for r in failures]
    lines += ["", "Shortcut forward, upstream module vs migm's loaded copy, same inputs (fp32; DiMOO: the larger of "
              "the conditional and unconditional branches):", "",
              "| family | seed | dimensions | rel. error | max abs error | rel. error of the update (f_next - f) |",
              "|---|---|---|---|---|---|"]
    for f in forward:
        lines.append(f"| {f['family']} | {f['seed']} | {f['dims']} | {f['rel_err']:.1e} | {f['max_abs']:.1e} | "
                     f"{f['delta_rel_err']:.1e} |")
    lines += ["", "Settings: " + meta["settings"], "", "Command: `" + meta["command"] + "`", ""]
    (out / "parity.md").write_text("\n".join(lines))


def _git_head(path: Path) -> str:
    try:
        import subprocess  # only for the report's provenance line
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def main():
    global SHORTCUT_OUT_SCALE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="a checkout of Kaiwen-Zhu/MIGM-Shortcut (outside this repo)")
    ap.add_argument("--upstream-commit", default="", help="its commit, for the report (default: git, if a checkout)")
    ap.add_argument("--out", default="benchmarks/results/upstream")
    ap.add_argument("--families", default="maskgit,dimoo")
    ap.add_argument("--maskgit", default="15:7,15:8,32:8,32:9,32:12", help="N:B pairs (upstream's eval.sh)")
    ap.add_argument("--dimoo", default="64:9,64:11,64:14", help="N:B pairs (upstream's budgets)")
    ap.add_argument("--shortcut-out-scale", type=float, default=SHORTCUT_OUT_SCALE,
                    help="the random shortcuts' output projection scale (1: plain N(0, 1/fan_in))")
    ap.add_argument("--seeds", default="0,1,2", help="one set of random weights, classes and prompts per seed")
    ap.add_argument("--classes", default="", help="MaskGIT: these class labels (default: 4 random ones per seed)")
    args = ap.parse_args()

    SHORTCUT_OUT_SCALE = args.shortcut_out_scale
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.logging.set_verbosity_error()
    U = import_upstream(Path(args.upstream).resolve())
    pairs = lambda text: [tuple(int(v) for v in p.split(":")) for p in text.split(",") if p]
    log = lambda msg: print(msg, flush=True)
    seeds = [int(v) for v in args.seeds.split(",")]
    rows, forward = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "maskgit" in args.families:
            classes = [int(c) for c in args.classes.split(",") if c]
            r, f = run_maskgit(U, work, pairs(args.maskgit), seeds, log, classes)
            rows += r
            forward += f
        if "dimoo" in args.families:
            r, f = run_dimoo(U, work, pairs(args.dimoo), seeds, log)
            rows += r
            forward += f
    s_mg, s_dm = MGSize(), DMSize()
    meta = {"upstream": "Kaiwen-Zhu/MIGM-Shortcut", "upstream_commit": args.upstream_commit or
            _git_head(Path(args.upstream)), "migm_commit": _git_head(Path(__file__).resolve().parent),
            "torch": torch.__version__, "seeds": seeds, "command": " ".join(["python"] + sys.argv),
            "settings": (
                f"MaskGIT: grid {s_mg.grid}x{s_mg.grid}, {s_mg.codebook} codes, {s_mg.classes} classes, "
                f"d {s_mg.width}, depth {s_mg.depth}, {s_mg.heads} heads; shortcut {s_mg.sc_heads} heads; "
                f"{s_mg.images} images (classes {args.classes or 'random'}), w = {s_mg.guidance} with upstream's "
                f"linear ramp, arccos. DiMOO: grid {s_dm.grid}x{s_dm.grid} (+ newlines), {s_dm.codebook} codes, "
                f"{s_dm.text_vocab} text ids, d {s_dm.width}, depth {s_dm.depth}, {s_dm.heads} heads, RoPE theta "
                f"{s_dm.rope_theta:g}; prompts of {', '.join(map(str, s_dm.prompt_lengths))} ids and a 14-id "
                f"unconditional prompt (migm: left-padded to {s_dm.max_text}); cfg {s_dm.guidance} constant, cosine "
                f"schedule. Random shortcut output projection at {SHORTCUT_OUT_SCALE:g} x N(0, 1/fan_in).")}
    write_report(Path(args.out), rows, forward, meta)
    print((Path(args.out) / "parity.md").read_text())


if __name__ == "__main__":
    main()
