"""`Pipeline`: class labels or text prompts in, images out, on any backend (torch, ONNX Runtime,
TensorRT).

    pipe = Pipeline.from_bundle("tiny.plan", backend="auto")     # or Pipeline.from_checkpoints()
    images = pipe.generate(classes=["cat", "dog"], steps=16, budget=6, seed=0)
    scenes = Pipeline.from_checkpoints(model="tiny-scenes")     # text-to-image (llada family)
    images = scenes.generate(prompts=["a small cat on the left"], budget=8)

The step loop is `sampling.loop.generate_tokens`, the same function training and evaluation
use, so a backend gives the training-time hybrid sampler's tokens for the same seed (up to
its arithmetic). On a CUDA device the whole loop is captured into one CUDA graph per
(batch, N, B, strategy, sampling settings) and replayed (runtime/graphs.py).

Thread safety: a pipeline owns one set of buffers and CUDA graphs; `generate` takes a lock,
so concurrent calls from several threads are safe but run one after another. For parallel
generation give each thread its own pipeline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import assets
from ..engines.bundle import BundleError, verify_bundle
from ..models.checkpoint import checkpoint_digest, load_checkpoint
from ..models.llada import LLaDA
from ..models.maskgit import MaskGIT
from ..models.shortcut import Shortcut
from ..models.shortcut_llada import LLaDAShortcut
from ..models.text import encode_prompts, load_tokenizer, tokenizer_path
from ..models.vqvae import VQVAE
from ..sampling.loop import STRATEGIES, HybridStats, ProbeFn, generate_tokens
from ..sampling.schedules import SCHEDULES
from .backends import BACKENDS, OrtBackend, TorchBackend, TrtBackend, trt_usable
from .graphs import GraphedLoop


@dataclass
class SamplingDefaults:
    steps: int = 16
    cfg: float = 0.0
    tau: float = 4.5
    temperature: float = 1.0
    schedule: str = "arccos"
    sampler: str = "halton"  # "dimoo" for the llada family


@dataclass
class ModelSpec:
    """What the loop needs to know of the model, whatever runs it."""
    num_tokens: int
    grid: int
    codebook_size: int
    num_classes: int
    family: str = "maskgit"  # "llada": text-to-image, conditioned on prompt token ids
    max_text: int = 0  # llada: prompt length
    pad_id: int = -1  # llada: the padding id (an all-padding prompt is the unconditional input)
    text_vocab: int = 0  # llada: text ids are 0..text_vocab-1

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def no_class_id(self) -> int:
        return self.num_classes


@dataclass
class Pipeline:
    backend: TorchBackend | OrtBackend | TrtBackend
    spec: ModelSpec
    class_names: Sequence[str] = ()
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    use_graphs: bool = True  # CUDA graphs on a GPU
    tokenizer: Any = None  # llada: the prompt tokenizer (text prompts -> ids)

    def __post_init__(self):
        self._lock = threading.Lock()
        # whole-loop graphs for torch only: ORT runs on its own stream, and a TensorRT context
        # changes input shapes (the new-token count) from step to step inside one loop
        self._graphs = GraphedLoop(self.device) if self.device.type == "cuda" and self.backend.name == "torch" else None
        self._graph_stats: dict = {}
        # the unconditional prompt (all padding): one tensor for the pipeline's life, since
        # captured graphs keep its address
        self._uncond = (torch.full((1, self.spec.max_text), self.spec.pad_id, device=self.device)
                        if self.spec.family == "llada" else None)

    # ---- construction ----

    @classmethod
    def from_checkpoints(cls, base: str | Path | None = None, vq: str | Path | None = None,
                         shortcut: str | Path | None = None, device: str = "cpu",
                         precision: str = "bf16", model: str = "tiny-animals") -> "Pipeline":
        """The torch backend over a base model, VQ-VAE and (optionally) shortcut checkpoint.

        Defaults: the shipped `model` (tiny-animals, or tiny-scenes for text-to-image); its
        shipped shortcut comes with the shipped base only (a shortcut is tied to the base it
        was trained for). A llada base's tokenizer is read from BASE.tokenizer/ beside it.
        """
        d = assets.model_dir(model)
        base_path = base or d / "base"
        base_model = load_checkpoint(base_path)
        vq_model = load_checkpoint(vq or d / "vq")
        if not isinstance(base_model, (MaskGIT, LLaDA)) or not isinstance(vq_model, VQVAE):
            raise ValueError("expected a maskgit or llada base checkpoint and a vqvae checkpoint")
        if base_model.cfg.codebook_size != vq_model.cfg.codebook_size or base_model.cfg.grid != vq_model.cfg.grid:
            raise ValueError(
                f"base model (codebook {base_model.cfg.codebook_size}, grid {base_model.cfg.grid}) does not match "
                f"the VQ-VAE (codebook {vq_model.cfg.codebook_size}, grid {vq_model.cfg.grid})"
            )
        if shortcut is None and base is None and Path(f"{d / 'shortcut'}.json").exists():
            shortcut = d / "shortcut"
        sc = load_shortcut(shortcut, base_path) if shortcut is not None else None
        pipe = cls.from_models(base_model, vq_model, sc, device=device, precision=precision)
        if isinstance(base_model, LLaDA) and tokenizer_path(base_path).is_dir():
            pipe.tokenizer = load_tokenizer(tokenizer_path(base_path))
        return pipe

    @classmethod
    def from_models(cls, base: MaskGIT, vq: VQVAE, shortcut: Shortcut | None = None, device: str = "cpu",
                    precision: str = "bf16") -> "Pipeline":
        """The torch backend over models in memory (random weights for benchmarks, say)."""
        meta = getattr(base, "meta", {})
        c = base.cfg
        if isinstance(base, LLaDA):
            spec = ModelSpec(c.num_tokens, c.grid, c.codebook_size, 0, "llada", c.max_text, c.pad_id, c.text_vocab)
        else:
            spec = ModelSpec(c.num_tokens, c.grid, c.codebook_size, c.num_classes)
        return cls(backend=TorchBackend(base, vq.decoder, shortcut, device=device, precision=precision), spec=spec,
                   class_names=tuple(meta.get("class_names", ())),
                   defaults=SamplingDefaults(**meta.get("sampling", {})))

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "auto", device: str | None = None) -> "Pipeline":
        """A `NAME.plan/` bundle on a backend.

        auto: TensorRT for a trt bundle; for an ort bundle the torch backend with CUDA graphs
        where a GPU is present; on a CPU ONNX Runtime for fp32/int8 bundles and torch (bf16) for
        fp16/best ones (the faster of the two for each, see README).
        torch runs the bundle's own checkpoints (fp32 for fp32/int8 bundles, bf16 otherwise).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        path = Path(path)
        doc = verify_bundle(path)
        family = doc.get("family", "maskgit")
        if family not in ("maskgit", "llada"):
            raise BundleError(f"bundle {path} is a {family} model; this runtime runs maskgit and llada bundles")
        gpu = torch.cuda.is_available()
        built = doc.get("backend", "ort")
        if backend == "auto":
            # on a CPU: ORT runs fp32 graphs faster than torch does, but ORT's FP16/INT8 CPU kernels
            # are slow (benchmarks/precision.py) where torch's bf16 uses the CPU's AMX/AVX512-BF16
            half = doc["precision"] in ("fp16", "best")
            backend = "trt" if built == "trt" else ("torch" if gpu or half else "ort")
        if backend == "trt" and built != "trt":
            raise BundleError(f"bundle {path} holds ONNX files, not TensorRT engines: use --backend ort or torch, "
                              "or rebuild with `migm-export build --backend trt`")
        if backend == "ort" and built != "ort":
            raise BundleError(f"bundle {path} holds TensorRT engines: use --backend trt (or torch), "
                              "or rebuild with `migm-export build --backend ort`")
        if backend == "trt" and not trt_usable():
            raise RuntimeError("the trt backend needs TensorRT and a CUDA GPU, and this machine lacks "
                               f"{'TensorRT' if gpu else 'a GPU'}: use an ort bundle with --backend ort or torch")
        device = device or ("cuda" if gpu and backend != "ort" else "cpu")
        b = doc["config"]["base"]
        if family == "llada":
            spec = ModelSpec(doc["num_tokens"], doc["grid"], doc["codebook_size"], 0, "llada", doc["max_text"],
                             doc["pad_id"], b["text_vocab"])
        else:
            spec = ModelSpec(doc["num_tokens"], doc["grid"], doc["codebook_size"], b["num_classes"])
        if backend == "torch":
            models = _bundle_checkpoints(path, doc)
            precision = "fp32" if doc["precision"] in ("fp32", "int8") else "bf16"
            impl = TorchBackend(models["base"], models["vq"].decoder, models.get("shortcut"), device=device,
                                precision=precision)
        elif backend == "ort":
            impl = OrtBackend(path, doc, device=device)
        else:
            impl = TrtBackend(path, doc, device=device)
        tokenizer = load_tokenizer(path / doc["tokenizer"]["dir"]) if doc.get("tokenizer") else None
        return cls(backend=impl, spec=spec, class_names=tuple(doc.get("class_names", ())),
                   defaults=SamplingDefaults(**doc.get("sampling", {})), tokenizer=tokenizer)

    # ---- what users ask of it ----

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def has_shortcut(self) -> bool:
        return self.backend.has_shortcut

    def class_index(self, name_or_index: str | int) -> int:
        """A class given by index or name -> index; ValueError naming the valid choices."""
        s = str(name_or_index).strip()
        if s.lstrip("-").isdigit():
            i = int(s)
            if not 0 <= i < self.num_classes:
                raise ValueError(f"class {i} is out of range 0..{self.num_classes - 1}")
            return i
        if s in self.class_names:
            return list(self.class_names).index(s)
        choices = ", ".join(self.class_names) if self.class_names else f"0..{self.num_classes - 1}"
        raise ValueError(f"unknown class {s!r}; choose from {choices}")

    def resolve_strategy(self, strategy: str | None, steps: int, budget: int | None) -> str:
        """None means: the shortcut when B < N (if there is one), else vanilla."""
        if strategy is not None:
            return strategy
        if budget is None or budget >= steps:
            return "vanilla"
        if not self.has_shortcut:
            raise ValueError(f"budget B={budget} < N={steps} needs a shortcut model, and none is loaded; "
                             "give a training-free strategy (reuse, extrapolate, ...) instead")
        return "shortcut"

    def conditions(self, classes: Sequence[int | str] | None = None,
                   prompts: torch.Tensor | Sequence[str] | str | None = None) -> torch.Tensor:
        """The conditioning the base model takes: class ids [n], or prompt token ids [n, max_text]
        (left-padded with the pad id, so the prompt ends right before the image as in Lumina-DiMOO).
        Text prompts go through the model's tokenizer."""
        if self.spec.family == "llada":
            if prompts is None or classes is not None:
                raise ValueError("this is a text-to-image model: give prompts, not classes")
            if not isinstance(prompts, torch.Tensor):
                if self.tokenizer is None:
                    raise ValueError("this model has no tokenizer: give prompt token ids ([n, max_text] LongTensor, "
                                     "left-padded with the pad id)")
                if len(prompts) == 0:
                    raise ValueError("no prompts given")
                return encode_prompts(self.tokenizer, prompts, self.spec.max_text, self.spec.text_vocab)
            if prompts.dim() != 2 or prompts.shape[1] != self.spec.max_text or len(prompts) == 0:
                raise ValueError(f"prompt ids must be [n, {self.spec.max_text}] with n >= 1, got {list(prompts.shape)}")
            if prompts.min() < 0 or prompts.max() >= self.spec.text_vocab:
                raise ValueError(f"prompt ids must be text tokens in 0..{self.spec.text_vocab - 1}")
            return prompts.long()
        if prompts is not None:
            raise ValueError("this is a class-conditional model: give classes, not prompts")
        if classes is None or len(classes) == 0:
            raise ValueError("no classes given")
        return torch.tensor([self.class_index(c) for c in classes], dtype=torch.long)

    def example_conditions(self, n: int, seed: int = 0) -> dict:
        """Keyword arguments for `generate_tokens` with n conditions (benchmarks): classes in turn,
        or random prompts of half the prompt length."""
        if self.spec.family == "llada":
            g = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, max(self.spec.pad_id - 16, 1), (n, self.spec.max_text), generator=g)
            ids[:, : self.spec.max_text // 2] = self.spec.pad_id  # left-padded
            return {"prompts": ids}
        return {"classes": [i % self.num_classes for i in range(n)]}

    @torch.no_grad()
    def generate_tokens(self, classes: Sequence[int | str] | None = None, *,
                        prompts: torch.Tensor | Sequence[str] | str | None = None,
                        steps: int | None = None, cfg: float | None = None,
                        tau: float | None = None, temperature: float | None = None, schedule: str | None = None,
                        seed: int = 0, batch_size: int = 64, strategy: str | None = None, budget: int | None = None,
                        stats: HybridStats | None = None, probe: ProbeFn | None = None,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Token grids [n, L] (on the CPU) for the given classes (names or indices), or for
        `prompts` (text, or token ids) with a text-to-image model.

        `budget` B < `steps` N runs the base model on B steps and `strategy` (default: the
        shortcut) on the others; `stats` collects base calls, `probe` sees predicted steps.
        """
        d = self.defaults
        steps = d.steps if steps is None else steps
        schedule = schedule or d.schedule
        labels = self.conditions(classes, prompts)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if steps > self.spec.num_tokens:
            raise ValueError(f"steps ({steps}) cannot exceed the number of tokens ({self.spec.num_tokens})")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if budget is not None and not 1 <= budget <= steps:
            raise ValueError(f"budget B={budget} must be between 1 and the number of steps N={steps}")
        strategy = self.resolve_strategy(strategy, steps, budget)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        if strategy == "shortcut" and not self.has_shortcut:
            raise ValueError("the shortcut strategy needs a shortcut model (none loaded)")
        if probe is not None and self.backend.name != "torch":
            raise ValueError("probes run the base model beside the loop: use the torch backend (the others reuse "
                             "their output buffers)")
        if strategy == "mlcache" and self.backend.cached is None:
            raise ValueError(f"the mlcache strategy needs the torch backend and a maskgit model (this pipeline "
                             f"runs {self.spec.family} on {self.backend.name})")
        cfg = d.cfg if cfg is None else cfg
        max_rows = getattr(self.backend, "max_rows", None)
        rows = min(batch_size, len(labels)) * (2 if cfg != 0 else 1)
        if max_rows is not None and rows > max_rows:
            raise ValueError(f"batch size {min(batch_size, len(labels))} needs {rows} rows"
                             f"{' with CFG' if cfg != 0 else ''}, but the engines' profile allows at most {max_rows}: "
                             "lower the batch size or rebuild the bundle with a larger --max-batch")
        opts = dict(num_tokens=self.spec.num_tokens, mask_id=self.spec.mask_id, no_class_id=self.spec.no_class_id,
                    steps=steps, cfg=cfg, tau=d.tau if tau is None else tau,
                    temperature=d.temperature if temperature is None else temperature, schedule=schedule,
                    strategy=strategy, budget=budget, head=self.backend.head, cached=self.backend.cached,
                    sampler=d.sampler)
        if self.spec.family == "llada":
            opts["uncond"] = self._uncond
        # one graph replays a whole chunk: no per-step callbacks, probes or mlcache (it syncs)
        graphed = self._graphs is not None and self.use_graphs and probe is None and strategy != "mlcache"
        with self._lock:
            if graphed:
                self._graphs.seed(seed)
            else:
                g = torch.Generator(device=self.device).manual_seed(seed)
            out, done, total = [], 0, len(labels) * steps
            for start in range(0, len(labels), batch_size):
                chunk = labels[start:start + batch_size].to(self.device)
                if graphed:
                    key = (tuple(chunk.shape),) + tuple((k, v) for k, v in opts.items() if k not in _CALLABLES)
                    tokens = self._graphs(key, chunk, lambda lab, gen, key=key: self._loop(lab, gen, opts, key))
                    if stats is not None:
                        _add_stats(stats, self._graph_stats[key])
                else:
                    tokens = generate_tokens(self.backend.base, chunk, generator=g, stats=stats, probe=probe,
                                             on_step=(lambda i, n: progress(done + i * len(chunk), total))
                                             if progress else None, shortcut=self._shortcut_fn(chunk, opts), **opts)
                done += len(chunk) * steps
                if graphed and progress:
                    progress(done, total)
                out.append(tokens.cpu())
        return torch.cat(out)

    def _shortcut_fn(self, labels, opts):
        """The backend's shortcut; for the llada family bound to both CFG branches' prompts."""
        if not self.has_shortcut:
            return None
        if self.spec.family != "llada":
            return self.backend.shortcut
        both = torch.cat([labels, opts["uncond"].expand_as(labels)]) if opts["cfg"] != 0 else labels
        return lambda *a: self.backend.shortcut(*a, prompt=both)

    def _loop(self, labels, generator, opts, key):
        stats = HybridStats()
        tokens = generate_tokens(self.backend.base, labels, generator=generator, stats=stats,
                                 shortcut=self._shortcut_fn(labels, opts), **opts)
        self._graph_stats[key] = stats
        return tokens

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images [n, C, H, W] in [0, 1] (on the CPU) for token grids [n, L]."""
        batch_size = min(batch_size, getattr(self.backend, "max_rows", None) or batch_size)
        with self._lock:
            return torch.cat([self.backend.decode(tokens[i:i + batch_size].to(self.device)).cpu()
                              for i in range(0, len(tokens), batch_size)])

    def generate(self, classes: Sequence[int | str] | None = None, **kwargs) -> torch.Tensor:
        """Images [n, C, H, W] in [0, 1] for the given classes (or `prompts=`); see `generate_tokens`."""
        return self.decode(self.generate_tokens(classes, **kwargs))


_CALLABLES = ("head", "cached", "uncond")


def _add_stats(into: HybridStats, one: HybridStats) -> None:
    into.base_calls += one.base_calls
    into.predicted_steps += one.predicted_steps
    into.recomputed_tokens += one.recomputed_tokens
    into.full_steps = one.full_steps


def _bundle_checkpoints(path: Path, doc: dict) -> dict:
    """The torch models a bundle carries (for the torch backend)."""
    entries = doc.get("checkpoints")
    if not entries:
        raise BundleError(f"bundle {path} holds no torch checkpoints (built by an older migm): rebuild it")
    return {name: load_checkpoint(path / e["file"]) for name, e in entries.items()}


def load_shortcut(path: str | Path, base_path: str | Path) -> Shortcut:
    """A shortcut checkpoint, checked against the base model it will run with."""
    sc = load_checkpoint(path)
    if not isinstance(sc, (Shortcut, LLaDAShortcut)):
        raise ValueError(f"{path} is not a shortcut checkpoint")
    trained_for = getattr(sc, "meta", {}).get("base_digest")
    actual = checkpoint_digest(base_path)
    if trained_for and trained_for != actual:
        raise ValueError(f"the shortcut {path} was trained for another base model "
                         f"(digest {trained_for}; {base_path} has {actual})")
    return sc
