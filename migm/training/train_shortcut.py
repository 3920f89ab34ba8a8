"""Train the MIGM-Shortcut model on recorded trajectories (docs/design.md).

One training sample is a window of a trajectory: the true features f[s] at a start
step s, then k shortcut steps chained from them (k = 1 is teacher forcing, the
released recipe), each fed the tokens the sampler unmasked at that step and the mask
ratio after it. The loss at each step is

    MSE(f_hat[s+j], f[s+j])               on the positions still masked (their logits matter)
  + kl * KL(p[s+j] || p_hat[s+j])         through the frozen base head; with CFG on the
                                          guided logits the sampler actually draws from

With `plan_budgets`, windows start at the full steps of those hybrid plans and run to
the step before the next full step: exactly the chains the sampler runs.
AdamW, lr x0.1 after `decay_at` iterations, EMA weights are the ones saved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..families import Family, ModelSpec, family_of
from ..models.checkpoint import read_config
from ..sampling.config import SamplerConfig
from ..sampling.plan import full_step_plan
from .dist import DistInfo, barrier
from .state import EMA, Progress, check_run, load_train_state, save_train_state
from .trajectories import TrajectorySet


@dataclass
class ShortcutTrainSettings:
    """How the shortcut trains. `migm-train shortcut` makes one option per field (help and bounds
    from the metadata), and reads the same fields from --config."""
    steps: int = field(default=3000, metadata={"help": "Training iterations.", "range": (1, 10_000_000)})
    batch_size: int = field(default=32, metadata={"help": "Windows per iteration (per process).",
                                                  "range": (1, 65536)})
    lr: float = field(default=1e-4, metadata={"help": "Learning rate (AdamW).", "range": (0.0, None)})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay.", "range": (0.0, None)})
    decay_at: int = field(default=1000, metadata={"help": "Multiply the lr by 0.1 after this many iterations.",
                                                  "range": (0, 10_000_000)})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the saved weights.", "range": (0.0, 1.0),
                                                      "aliases": ("--ema",)})
    rollout: int = field(default=1, metadata={"help": "Most shortcut steps chained per window (1 = teacher forcing).",
                                              "range": (1, 1000)})
    plan_budgets: list[int] = field(default_factory=list, metadata={
        "help": "Draw windows along these hybrid plans, e.g. 6,8,12 (start at full steps)."})
    kl: float = field(default=0.0, metadata={"help": "Weight of the (guided) logit KL term; 0 = MSE only.",
                                             "range": (0.0, None)})
    val_fraction: float = field(default=0.05, metadata={"help": "Trajectories held out for validation.",
                                                        "range": (0.0, 0.5)})
    max_trajectories: int = field(default=0, metadata={
        "help": "Train on only the first n trajectories (0 = all; the held-out ones stay the same).",
        "range": (0, 10_000_000)})
    eval_every: int = field(default=500, metadata={"help": "Validate every this many iterations.",
                                                   "range": (1, 10_000_000)})
    patience: int = field(default=0, metadata={
        "help": "Stop when this many evaluations in a row bring the validation KL no lower (0: train all --steps).",
        "range": (0, 10_000)})
    seed: int = field(default=0, metadata={"range": (0, 2**63 - 1)})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})

    def to_dict(self) -> dict:
        return asdict(self)


def windows(steps: int, rollout: int, plan_budgets: list[int]) -> list[tuple[int, int]]:
    """(start step s, chained steps k) pairs training draws from."""
    if rollout < 1:
        raise ConfigError(f"rollout must be >= 1, got {rollout}")
    if not plan_budgets:
        return [(s, rollout) for s in range(steps - rollout)] or [(0, steps - 1)]
    out = []
    for b in plan_budgets:
        plan = full_step_plan(steps, b) + [steps]
        for s, t in zip(plan, plan[1:]):
            k = min(t - 1 - s, rollout)
            if k >= 1:
                out.append((s, k))
    if not out:
        raise ConfigError(f"plans with budgets {plan_budgets} at N={steps} have no shortcut steps")
    return out


@dataclass
class Batch:
    feats: torch.Tensor  # [b, branches, k+1, L, d]: f[s..s+k]
    tokens: torch.Tensor  # [b, L] final tokens
    reveal: torch.Tensor  # [b, L] step that unmasked each position
    start: torch.Tensor  # [b] start step s
    cond: torch.Tensor  # [b, ...] the conditions (class ids, or prompt ids)


def load_batch(ts: TrajectorySet, items: list[tuple[int, int]], k: int, device: str = "cpu") -> Batch:
    """Windows of k chained steps starting at the given (trajectory, step)."""
    feats = torch.stack([ts.window(i, s, s + k + 1) for i, s in items])
    recs = [ts.record(i) for i, _ in items]
    return Batch(feats.to(device), torch.stack([r[0] for r in recs]).to(device),
                 torch.stack([r[1] for r in recs]).to(device), torch.tensor([s for _, s in items], device=device),
                 torch.stack([r[2] for r in recs]).to(device))


def new_tokens(batch: Batch, step: torch.Tensor):
    """Tokens unmasked at `step` [b], as a padded (positions, tokens, key mask) triple [b, M]."""
    hit = batch.reveal == step[:, None]
    m = max(int(hit.sum(1).max()), 1)
    # stable sort puts the hits first, in position order; the rest is padding
    order = torch.sort((~hit).to(torch.int8), dim=1, stable=True).indices[:, :m]
    keys = hit.gather(1, order)
    return order, batch.tokens.gather(1, order), keys


@dataclass
class Model:
    """What a chain needs to know of the base: its family, spec, unconditional input and head."""
    family: Family
    spec: ModelSpec
    uncond: torch.Tensor
    head: object  # features [B, T, d] -> logits [B, L, K], the frozen base head

    @classmethod
    def of(cls, base) -> "Model":
        fam = family_of(base)
        spec = fam.spec(base.cfg)
        return cls(fam, spec, fam.uncond(spec), base.head)


def chain(model, batch: Batch, k: int, branches: int, m: Model):
    """Run k shortcut steps from f[s]; yields (j, predicted f[s+j+1] [b, br, T, d], still-masked grid
    positions [b, L], loss rows [b, br, T]). Rows are interleaved by branch (the conditional row,
    then its unconditional one)."""
    b, _, _, n, d = batch.feats.shape
    x = batch.feats[:, :, 0].reshape(b * branches, n, d)
    cond = batch.cond
    if branches == 2:
        cond = torch.stack([cond, m.uncond.to(cond.device).expand_as(cond)], 1).flatten(0, 1)
    for j in range(k):
        step = batch.start + j
        pos, tok, keys = new_tokens(batch, step)
        masked = batch.reveal > step[:, None]  # still masked after this step
        ratio = masked.float().mean(1)
        rep = lambda t: t.repeat_interleave(branches, 0)
        x = m.family.run_shortcut(model, x, rep(pos), rep(tok), rep(keys), rep(ratio), cond)
        rows = m.family.loss_rows(m.spec, rep(masked), cond).view(b, branches, n)
        yield j, x.view(b, branches, n, d), masked, rows


def _guided_logp(head, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Log-probabilities the sampler draws from: f [b, br, T, d] -> [b, L, K] (CFG with weight w [b])."""
    b, br = f.shape[:2]
    logits = head(f.float().flatten(0, 1))
    logits = logits.view(b, br, *logits.shape[1:])
    if br == 2:  # (1 + w) * cond - w * uncond, per sample
        logits = logits[:, 1] + (logits[:, 0] - logits[:, 1]) * (1 + w.to(logits.device))[:, None, None]
    else:
        logits = logits[:, 0]
    return torch.log_softmax(logits, -1)


def window_losses(model, batch: Batch, k: int, sampler: SamplerConfig, branches: int, kl_weight: float, m: Model):
    """Mean MSE (over the family's loss rows) and KL (over the still-masked positions) of the k
    chained steps of a batch; the KL is on the logits guided as the sampler guides them at each step."""
    mse_total, kl_total = 0.0, 0.0
    for j, pred, masked, rows in chain(model, batch, k, branches, m):
        target = batch.feats[:, :, j + 1]
        sel = rows[..., None].expand_as(pred)
        mse_total = mse_total + F.mse_loss(pred.float()[sel], target[sel])
        if kl_weight:
            step = batch.start + j + 1
            w = torch.tensor([sampler.guidance_at(int(i)) for i in step])
            lp_true = _guided_logp(m.head, target, w)
            lp_pred = _guided_logp(m.head, pred, w)
            kl = (lp_true.exp() * (lp_true - lp_pred)).sum(-1)[masked].mean()
            kl_total = kl_total + kl
    return mse_total / k, kl_total / k


class WindowLoss(torch.nn.Module):
    """A batch's whole chained loss in one forward call, so DistributedDataParallel sees
    exactly one forward per backward however many shortcut steps a window chains."""

    def __init__(self, shortcut: torch.nn.Module, m: Model, sampler: SamplerConfig, branches: int, kl_weight: float):
        super().__init__()
        self.shortcut = shortcut
        self.m = m  # holds the frozen base head: a plain attribute, not a submodule DDP would sync
        self.sampler, self.branches, self.kl_weight = sampler, branches, kl_weight

    def forward(self, feats, tokens, reveal, start, cond, k: int):
        return window_losses(self.shortcut, Batch(feats, tokens, reveal, start, cond), k, self.sampler,
                             self.branches, self.kl_weight, self.m)


@torch.no_grad()
def validate(model, ts: TrajectorySet, items: list[int], m: Model, chained: int = 3,
             starts: list[int] | None = None) -> dict:
    """One-step and chained feature error and guided logit KL, against feature reuse.

    Relative error = ||f_hat - f|| / ||f|| over the still-masked image positions of each sample.
    """
    branches, steps, sampler = ts.branches, ts.steps, ts.sampler
    image = m.family.image_rows(m.spec)
    starts = starts or list(range(0, steps - chained, max(1, (steps - chained) // 8)))
    acc = {key: [] for key in ("rel_err_1", "rel_err_chain", "kl_1", "kl_chain",
                               "reuse_rel_err_1", "reuse_rel_err_chain", "reuse_kl_1", "reuse_kl_chain")}
    for s in starts:
        batch = load_batch(ts, [(i, s) for i in items], chained, device=next(model.parameters()).device.type)
        for j, pred, masked, _ in chain(model, batch, chained, branches, m):
            if j not in (0, chained - 1):
                continue
            suffix = "1" if j == 0 else "chain"
            target = batch.feats[:, :, j + 1]
            w = torch.full((len(items),), sampler.guidance_at(s + j + 1))
            lp_true = _guided_logp(m.head, target, w)
            for name, f in (("", pred.float()), ("reuse_", batch.feats[:, :, 0])):
                keep = masked[:, None, :, None]
                diff, ref = (f - target)[:, :, image], target[:, :, image]
                err = (diff ** 2 * keep).sum((1, 2, 3)).sqrt() / (ref ** 2 * keep).sum((1, 2, 3)).sqrt()
                kl = (lp_true.exp() * (lp_true - _guided_logp(m.head, f, w))).sum(-1)
                kl = (kl * masked).sum(1) / masked.sum(1).clamp(min=1)
                acc[f"{name}rel_err_{suffix}"].append(err.mean().item())
                acc[f"{name}kl_{suffix}"].append(kl.mean().item())
    return {key: sum(v) / len(v) for key, v in acc.items()}


def plateaued(curve: list[dict], patience: int, key: str = "kl_chain", min_drop: float = 1e-3) -> bool:
    """The last `patience` evaluations brought no validation KL below the best before them (by a
    relative `min_drop`): training has stopped improving."""
    if patience < 1 or len(curve) <= patience:
        return False
    best_before = min(e[key] for e in curve[:-patience])
    return min(e[key] for e in curve[-patience:]) > best_before * (1 - min_drop)


def train_shortcut(out: str, base: torch.nn.Module, ts: TrajectorySet, cfg, s: ShortcutTrainSettings,
                   meta: dict | None = None, info: DistInfo | None = None,
                   progress: Progress | None = None) -> tuple[torch.nn.Module, dict]:
    """Train (or resume) a shortcut of config `cfg` (the base family's variant) for `base` on
    trajectory set `ts`; returns (EMA model, last validation)."""
    info = info or DistInfo()
    check_run(out, s.steps)
    fam = family_of(base)
    spec = fam.spec(base.cfg)
    sampler = ts.sampler
    if ts.manifest["width"] != spec.width or ts.num_tokens != spec.num_tokens:
        raise ConfigError("the trajectories were recorded with a base model of another width or grid")
    if ts.features[0].shape[-2] != spec.feature_rows:
        raise DataError(f"the trajectories in {ts.path} hold {ts.features[0].shape[-2]} feature rows, the base has "
                        f"{spec.feature_rows} (recorded by an older migm, at the image positions only): record them "
                        "again with `migm-train trajectories`")
    if family_of(cfg) is not fam:
        raise ConfigError(f"a {fam.name} base takes its own shortcut variant ({fam.shortcut_config_cls.__name__}), "
                          f"not {type(cfg).__name__}")
    torch.manual_seed(s.seed)
    model = fam.new_shortcut(base, cfg)
    model.to(s.device)
    base.to(s.device).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    m = Model.of(base)
    ema = EMA(model, s.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    # what a resume must share with the run it continues (not the step count, eval cadence or device)
    settings = {"config": cfg.to_dict(), **{k: v for k, v in s.to_dict().items()
                                            if k not in ("steps", "eval_every", "patience", "device")},
                "trajectories": {"num": len(ts), **sampler.to_dict()}}
    start = load_train_state(out, model, opt, ema, settings=settings)
    loss_fn = WindowLoss(model, m, sampler, ts.branches, s.kl)
    if info.world > 1:
        loss_fn = torch.nn.parallel.DistributedDataParallel(
            loss_fn, device_ids=[info.local_rank] if s.device.startswith("cuda") else None)

    n_val = max(1, int(round(len(ts) * s.val_fraction)))
    train_ids = len(ts) - n_val
    if train_ids < 1:
        raise DataError(f"{len(ts)} trajectories are too few to hold out {n_val} for validation")
    val_items = list(range(train_ids, len(ts)))[:48]
    if s.max_trajectories:
        train_ids = min(train_ids, s.max_trajectories)
    wins = windows(ts.steps, s.rollout, s.plan_budgets)
    g = torch.Generator().manual_seed(s.seed * 7919 + info.rank * 104729 + start)
    meta = {**(meta or {}), "train": s.to_dict(),
            "trajectories": {"num": ts.manifest.get("num"), "seed": ts.manifest.get("seed"), **sampler.to_dict()}}
    last_val: dict = {}
    # the validation curve, kept in the checkpoint's meta (a resume continues it)
    curve = [e for e in (read_config(out)["meta"].get("curve", []) if start else []) if e["step"] <= start]

    def evaluate_and_save(step) -> bool:
        """Validate and save; True when the validation KL has not fallen for `patience` evaluations."""
        nonlocal last_val
        stop = torch.zeros(1)
        if info.main:
            last_val = validate(ema.module, ts, val_items, m)
            curve.append({"step": step, **{k: float(f"{v:.6g}") for k, v in last_val.items()}})
            save_train_state(out, model, opt, step, ema, settings=settings,
                             meta={**meta, "validation": last_val, "curve": curve})
            stop[0] = float(plateaued(curve, s.patience))
        if info.world > 1:
            torch.distributed.broadcast(stop, 0)
        barrier(info)
        return bool(stop[0])

    model.train()
    for step in range(start, s.steps):
        for group in opt.param_groups:
            group["lr"] = s.lr * (0.1 if step >= s.decay_at else 1.0)
        # one window shape per batch (start steps may differ; new tokens are padded)
        w = wins[int(torch.randint(len(wins), (1,), generator=g))]
        k = w[1]
        same_k = [x for x in wins if x[1] == k]
        picks = torch.randint(len(same_k), (s.batch_size,), generator=g)
        ids = torch.randint(train_ids, (s.batch_size,), generator=g)
        batch = load_batch(ts, [(int(i), same_k[int(p)][0]) for i, p in zip(ids, picks)], k, s.device)
        with torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16):
            mse, kl = loss_fn(batch.feats, batch.tokens, batch.reveal, batch.start, batch.cond, k)
        loss = mse + s.kl * kl if s.kl else mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        done = step + 1
        if progress and info.main:
            progress(done, s.steps, {"mse": mse.item(), **({"kl": kl.item()} if s.kl else {})})
        if (done % s.eval_every == 0 or done == s.steps) and evaluate_and_save(done):
            break
    if start >= s.steps and info.main:  # nothing left to do: still report validation
        last_val = validate(ema.module, ts, val_items, m)
    return ema.module, last_val
