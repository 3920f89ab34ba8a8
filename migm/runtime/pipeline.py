"""`Pipeline`: class labels or text prompts in, images out, on any backend (torch, ONNX Runtime,
TensorRT).

    pipe = Pipeline.from_bundle("tiny.plan", backend="auto")     # or Pipeline.from_checkpoints()
    images = pipe.generate(classes=["cat", "dog"], steps=16, budget=6, seed=0)
    scenes = Pipeline.from_checkpoints(model="tiny-scenes")     # text-to-image (llada family)
    images = scenes.generate(prompts=["a small cat on the left"], budget=8)

The step loop is `sampling.loop.generate_tokens`, the same function training and evaluation
use, so a backend gives the training-time hybrid sampler's tokens for the same seed (up to
its arithmetic). On a CUDA device the whole loop is captured into one CUDA graph per
(batch, sampler settings, strategy, budget) and replayed (runtime/graphs.py).

Thread safety: a pipeline owns one set of buffers and CUDA graphs; `generate` takes a lock,
so concurrent calls from several threads are safe but run one after another. For parallel
generation give each thread its own pipeline.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import assets
from ..choices import BUNDLE_BACKENDS, CPU_BACKENDS, FP32_BUNDLE_PRECISIONS, RUNTIME_BACKENDS
from ..engines.bundle import BundleError, verify_bundle
from ..engines.manifest import Manifest
from ..engines.refit import engines_problem
from ..errors import BackendUnavailable, ConfigError
from ..families import Family, ModelSpec, family_of
from ..models import require_device
from ..models.checkpoint import BASE_KINDS, VQ_KINDS, load_checkpoint, load_shortcut
from ..models.text import load_tokenizer, tokenizer_path
from ..sampling.config import SamplerConfig
from ..sampling.loop import HybridStats, ProbeFn, generate_tokens
from ..sampling.strategies import Strategy, check_strategy, get_strategy
from .backends import Backend, OpenVinoBackend, OrtBackend, TorchBackend, TrtBackend
from .graphs import GraphedLoop
from .images import to_pil


@dataclass
class PipelineOutput:
    """What `Pipeline.__call__` returns (diffusers' shape): the images, and the tokens and sampling
    statistics behind them."""
    images: Any  # list of PIL images, or a tensor / array (output_type)
    tokens: torch.Tensor  # [n, L]
    stats: HybridStats


@dataclass
class Pipeline:
    backend: Backend
    family: Family
    spec: ModelSpec
    class_names: Sequence[str] = ()
    defaults: SamplerConfig = field(default_factory=SamplerConfig)
    use_graphs: bool = True  # whole-loop CUDA graphs where the backend allows them
    tokenizer: Any = None  # text-to-image: the prompt tokenizer (text prompts -> ids)
    models: dict = field(default_factory=dict)  # the torch models (base, vq, shortcut) where built from them

    def __post_init__(self):
        self._lock = threading.RLock()  # re-entrant: decode() inside an iter_tokens() loop
        self._graphs = GraphedLoop(self.device) if self.backend.caps.whole_loop_graphs else None
        # the unconditional input: one tensor for the pipeline's life, since captured graphs keep its address
        self._uncond = self.family.uncond(self.spec, self.device)

    # ---- construction ----

    @classmethod
    def from_checkpoints(cls, base: str | Path | None = None, vq: str | Path | None = None,
                         shortcut: str | Path | None = None, device: str = "cpu",
                         precision: str = "bf16", model: str = "tiny-animals") -> "Pipeline":
        """The torch backend over a base model, VQ-VAE and (optionally) shortcut checkpoint.

        Defaults: the shipped `model` (tiny-animals, or tiny-scenes for text-to-image); its
        shipped shortcut comes with the shipped base only (a shortcut is tied to the base it
        was trained for). A text model's tokenizer is read from BASE.tokenizer/ beside it.
        """
        d = assets.model_dir(model)
        base_path = base or d / "base"
        base_model = load_checkpoint(base_path, kinds=BASE_KINDS)
        vq_model = load_checkpoint(vq or d / "vq", kinds=VQ_KINDS)
        if shortcut is None and base is None and assets.has_checkpoint(d / "shortcut"):
            shortcut = d / "shortcut"
        sc = load_shortcut(shortcut, base_path, base_model) if shortcut is not None else None
        pipe = cls.from_models(base_model, vq_model, sc, device=device, precision=precision)
        if pipe.family.needs_tokenizer and tokenizer_path(base_path).is_dir():
            pipe.tokenizer = load_tokenizer(tokenizer_path(base_path))
        return pipe

    @classmethod
    def from_models(cls, base: torch.nn.Module, vq: torch.nn.Module, shortcut: torch.nn.Module | None = None,
                    device: str = "cpu", precision: str = "bf16") -> "Pipeline":
        """The torch backend over models in memory (random weights for benchmarks, say)."""
        require_device(device)
        fam = family_of(base)
        spec = fam.spec(base.cfg)
        if (vq.cfg.codebook_size, vq.cfg.grid) != (spec.codebook_size, spec.grid):
            raise ConfigError(f"base model (codebook {spec.codebook_size}, grid {spec.grid}) does not match "
                              f"the VQ-VAE (codebook {vq.cfg.codebook_size}, grid {vq.cfg.grid})")
        meta = getattr(base, "meta", {})
        models = {"base": base, "vq": vq, **({"shortcut": shortcut} if shortcut is not None else {})}
        return cls(backend=TorchBackend(base, vq.decoder, shortcut, device=device, precision=precision),
                   family=fam, spec=spec, class_names=tuple(meta.get("class_names", ())),
                   defaults=SamplerConfig.from_dict(meta.get("sampling"), default=fam.sampler).validate(),
                   models=models)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, torch_dtype: torch.dtype | None = None,
                        device: str | None = None, backend: str = "auto", revision: str | None = None) -> "Pipeline":
        """The Hugging Face way in: a shipped model's name ("tiny-animals", "tiny-scenes"), a bundle
        (NAME.plan/), a saved pipeline folder (`save_pretrained`, `migm-export convert`) or a Hub repo
        id ("org/name", through huggingface_hub's cache; `revision`). `torch_dtype`: torch.float32
        (the default: the exact arithmetic, so tokens equal upstream's) or torch.bfloat16 (faster
        where the hardware has bf16 units); float16 is refused (see `check_dtype`)."""
        precision = check_dtype(torch_dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(name_or_path, str) and name_or_path in assets.MODELS:
            return cls.from_checkpoints(model=name_or_path, device=device, precision=precision)
        if (Path(name_or_path) / "manifest.json").exists():
            return cls.from_bundle(name_or_path, backend=backend)
        # diffusers is heavy: the diffusers pipeline (folders, the Hub) is imported only when asked for
        from migm.runtime.diffusers_pipeline import MigmPipeline  # heavy (diffusers): on demand
        return MigmPipeline.from_pretrained(name_or_path, torch_dtype=torch_dtype, revision=revision).to(device).runtime

    def save_pretrained(self, directory: str | Path, **kwargs) -> Path:
        """Write the pipeline as a diffusers folder (`MigmPipeline.save_pretrained`: model_index.json,
        base/, vq/, shortcut/, tokenizer/, the model card and the pipeline file diffusers loads)."""
        # diffusers is heavy: the diffusers pipeline is imported only when asked for
        from migm.runtime.diffusers_pipeline import MigmPipeline  # heavy (diffusers): on demand
        return MigmPipeline.from_runtime(self).save_pretrained(directory, **kwargs)

    def __call__(self, prompt: str | Sequence[str] | None = None, class_labels: Sequence[int | str] | int | None = None,
                 *, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None, num_images_per_prompt: int = 1,
                 budget: int | None = None, strategy: str | None = None, seed: int | None = None,
                 batch_size: int = 64, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable[..., Any] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
                 progress: Callable[[int, int], None] | None = None, owner: Any = None) -> "PipelineOutput | tuple":
        """diffusers-style generation: `prompt` (text-to-image) or `class_labels`, each repeated
        `num_images_per_prompt` times; `budget` B < N runs the shortcut. Returns `PipelineOutput(images=...)`
        (PIL images for output_type "pil", a [n, C, H, W] tensor for "pt", a [n, H, W, C] array for "np"),
        or `(images,)` without `return_dict`.

        `guidance_scale` is diffusers' s: u + s·(c − u), classifier-free guidance off for s <= 1 (the
        base then runs on the conditional rows only). migm's own `guidance` w (`generate`, the sampler
        config) is s − 1: `pipe(guidance_scale=s)` and `generate(guidance=s - 1)` give the same images.
        `generator`: one torch.Generator (one seed is drawn from it for the call) or a list, one per
        image (each image's seed is drawn from its own generator, so it does not depend on the rest of
        the batch); or an explicit `seed`. `callback_on_step_end(owner, step, step, {})` runs after
        every step (no tensors are exposed: the step loop keeps them); `progress(done, total)` counts
        image-steps."""
        if output_type not in ("pil", "pt", "np"):
            raise ConfigError(f"output_type must be pil, pt or np, not {output_type!r}")
        if callback_on_step_end_tensor_inputs:
            raise ConfigError(f"callback_on_step_end_tensor_inputs: migm exposes no loop tensors to callbacks "
                              f"(asked for {', '.join(callback_on_step_end_tensor_inputs)})")
        given = {"prompt": prompt, "class_labels": class_labels}[self.family.call_keyword]
        if isinstance(given, (str, int)):
            given = [given]
        if given is None:
            raise ConfigError(f"give {self.family.call_keyword} for this model")
        given = [g for g in given for _ in range(num_images_per_prompt)]
        seed = _seeds(generator, seed, len(given))
        guidance = None if guidance_scale is None else max(0.0, float(guidance_scale) - 1.0)
        calls = [0]

        def on_progress(done, total):
            if progress:
                progress(done, total)
            if callback_on_step_end:
                steps = total // len(given)
                callback_on_step_end(owner or self, calls[0] % steps, calls[0] % steps, {})
                calls[0] += 1

        stats = HybridStats()
        kw = {self.family.conditions_keyword: given}
        with self._lock:
            graphs = self.use_graphs
            self.use_graphs = graphs and callback_on_step_end is None  # a whole-loop graph has no steps to call back
            try:
                tokens = self.generate_tokens(**kw, steps=num_inference_steps, guidance=guidance, seed=seed,
                                              budget=budget, strategy=strategy, stats=stats, batch_size=batch_size,
                                              progress=on_progress if (progress or callback_on_step_end) else None)
            finally:
                self.use_graphs = graphs
        images = self.decode(tokens)
        if output_type == "pil":
            images = [to_pil(img) for img in images]
        elif output_type == "np":
            images = images.permute(0, 2, 3, 1).numpy()
        out = PipelineOutput(images=images, tokens=tokens, stats=stats)
        return out if return_dict else (out.images,)

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "auto", device: str | None = None,
                    threads: int = 0, verify: bool = False) -> "Pipeline":
        """A `NAME.plan/` bundle on a backend.

        auto: TensorRT for a trt bundle; OpenVINO for an openvino bundle (refused, saying what would run
        it, where OpenVINO is not installed); for an ort bundle the torch backend with CUDA graphs
        where a GPU is present; on a CPU ONNX Runtime for fp32/int8 bundles and torch (bf16) for
        fp16/best ones (the faster of the two for each, see benchmarks/RESULTS.md).
        torch runs the bundle's own checkpoints (fp32 for fp32/int8 bundles, bf16 otherwise).
        `threads`: ONNX Runtime's threads per session (0: one per core), for several pipelines on one
        machine (torch's are process-wide: torch.set_num_threads).
        A trt bundle whose engines do not suit this machine (another TensorRT release or flavour,
        another GPU) is refused with the command that rebuilds them (`migm-run` rebuilds them first:
        engines/refit.py); loading never builds.
        Every file is hashed at the first open; later opens re-hash only files whose stat changed
        (engines/stamps.py); `verify` hashes them all.
        """
        if backend not in RUNTIME_BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(RUNTIME_BACKENDS)}")
        path = Path(path)
        doc = verify_bundle(path, full=verify)
        fam, spec = doc.fam, doc.model_spec
        gpu = torch.cuda.is_available()
        built = doc.backend
        if backend == "auto":
            # a trt or openvino bundle runs on its own backend. An ort bundle on a CPU: ORT runs fp32 graphs
            # faster than torch does, but ORT's FP16/INT8 CPU kernels are slow (benchmarks/precision.py)
            # where torch's bf16 uses the CPU's AMX/AVX512-BF16: ORT for the bundles whose checkpoints
            # torch would run in fp32, torch (bf16) for the others
            half = doc.precision not in FP32_BUNDLE_PRECISIONS
            backend = built if built != "ort" else ("torch" if gpu or half else "ort")
        if backend == "trt" and built != "trt":
            raise BundleError(f"bundle {path} holds ONNX files, not TensorRT engines: use --backend ort or torch, "
                              "or rebuild with `migm-export build --backend trt`")
        if backend in BUNDLE_BACKENDS and built != backend:
            held = {"trt": "TensorRT engines", "ort": "ONNX files for ONNX Runtime", "openvino": "OpenVINO IR"}[built]
            raise BundleError(f"bundle {path} holds {held}: use --backend {built} (or torch), "
                              f"or rebuild with `migm-export build --backend {backend}`")
        device = device or ("cuda" if gpu and backend not in CPU_BACKENDS else "cpu")
        if backend == "trt":
            problem = engines_problem(path, doc, torch.device(device))
            if problem is not None:
                raise BundleError(f"bundle {path} cannot run here: {problem}. Rebuild its engines with "
                                  f"`migm-export rebuild {path}` (migm-run does it first)")
        if backend == "torch":
            models = _bundle_checkpoints(path, doc)
            precision = "fp32" if doc.precision in FP32_BUNDLE_PRECISIONS else "bf16"
            impl = TorchBackend(models["base"], models["vq"].decoder, models.get("shortcut"), device=device,
                                precision=precision)
        elif backend == "ort":
            impl = OrtBackend(path, doc, spec, fam, device=device, threads=threads)
        elif backend == "openvino":
            if torch.device(device).type != "cpu":
                raise BackendUnavailable("the openvino backend runs on the CPU: use --backend torch on a GPU")
            impl = OpenVinoBackend(path, doc, spec, fam, threads=threads)
        else:
            impl = TrtBackend(path, doc, spec, fam, device=device)
        tok = doc.tokenizer  # its files were confined and hashed by verify_bundle: read only those
        tokenizer = load_tokenizer(path / tok.dir, tok.files) if tok else None
        return cls(backend=impl, family=fam, spec=spec, class_names=tuple(doc.class_names), defaults=doc.sampling,
                   tokenizer=tokenizer)

    # ---- what users ask of it ----

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def has_shortcut(self) -> bool:
        return self.backend.caps.shortcut

    def resolve_strategy(self, strategy: str | None, steps: int, budget: int | None) -> str:
        """None means: the shortcut when B < N (if there is one), else vanilla."""
        if strategy is not None:
            return strategy
        if budget is None or budget >= steps:
            return "vanilla"
        self.check_strategy("shortcut", why=f", and B={budget} < N={steps} runs the shortcut by default")
        return "shortcut"

    def check_strategy(self, name: str, why: str = "") -> Strategy:
        """The strategy `name` if this pipeline's backend has what it needs; else a ConfigError saying
        what is missing and what to do (sampling/strategies.py `check_strategy`)."""
        where = f"this pipeline runs {self.family.name} on the {self.backend.name} backend{why}"
        return check_strategy(name, self.backend.provides, where)

    def conditions(self, classes: Sequence[int | str] | None = None,
                   prompts: torch.Tensor | Sequence[str] | str | None = None) -> torch.Tensor:
        """The conditioning the base model takes: class ids [n] for a class-conditional model, prompt
        token ids [n, max_text] for a text-to-image one (text goes through the model's tokenizer)."""
        given = {"classes": classes, "prompts": prompts}
        wanted = given.pop(self.family.conditions_keyword)
        for other, value in given.items():
            if value is not None:
                raise ConfigError(f"this is a {self.family.task} model: give {self.family.conditions_keyword}, "
                                  f"not {other}")
        return self.encode_conditions(wanted)

    def encode_conditions(self, given: torch.Tensor | Sequence) -> torch.Tensor:
        """`conditions` for conditions of the model's own kind (`family.condition_kind`: class names or
        indices, or prompts as text or ids)."""
        return self.family.encode(self.spec, given, class_names=self.class_names, tokenizer=self.tokenizer)

    def sampler(self, sampler: SamplerConfig | None = None, **overrides) -> SamplerConfig:
        """The model's sampler defaults (or `sampler`) with `overrides` (None = keep), validated."""
        return (sampler or self.defaults).replace(**overrides).validate(self.spec.num_tokens)

    def resolve(self, sampler: SamplerConfig | None = None, *, strategy: str | None = None,
                budget: int | None = None, **overrides) -> tuple[SamplerConfig, str, int | None]:
        """The settings a call runs with, checked against this pipeline: (sampler with `overrides`,
        strategy, budget). Raises ConfigError naming the first bad one; `iter_tokens` starts here."""
        cfg = self.sampler(sampler, **overrides)
        if budget is not None and not 1 <= budget <= cfg.steps:
            raise ConfigError(f"budget B={budget} must be between 1 and the number of steps N={cfg.steps}")
        strategy = self.resolve_strategy(strategy, cfg.steps, budget)
        self.check_strategy(strategy)
        return cfg, strategy, budget

    def example_conditions(self, n: int, seed: int = 0) -> torch.Tensor:
        """n conditions (benchmarks): every class in turn, or random prompts of half the prompt length."""
        return self.family.example_conditions(self.spec, n, torch.Generator().manual_seed(seed))

    def generate_tokens(self, classes: Sequence[int | str] | None = None, **kwargs) -> torch.Tensor:
        """Token grids [n, L] (on the CPU) for the given classes (names or indices), or for
        `prompts` (text, or token ids) with a text-to-image model, or for `cond` (encoded conditions).
        The keywords are `iter_tokens`'."""
        return torch.cat(list(self.iter_tokens(classes, **kwargs)))

    def iter_tokens(self, classes: Sequence[int | str] | None = None, *,
                    prompts: torch.Tensor | Sequence[str] | str | None = None, cond: torch.Tensor | None = None,
                    sampler: SamplerConfig | None = None, steps: int | None = None,
                    guidance: float | None = None, tau: float | None = None, temperature: float | None = None,
                    schedule: str | None = None, seed: int | Sequence[int] = 0, batch_size: int = 64,
                    strategy: str | None = None, budget: int | None = None, stats: HybridStats | None = None,
                    probe: ProbeFn | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Iterator[torch.Tensor]:
        """Token grids batch by batch ([<= batch_size, L] on the CPU), so a long run can be written as it
        goes; the same tokens as one `generate_tokens` call. Everything is checked before the first batch.

        `sampler` (default: the model's) with `steps`, `guidance`, `tau`, `temperature`, `schedule`
        overriding it; `budget` B < N runs the base model on B steps and `strategy` (default: the
        shortcut) on the others; `stats` collects base calls, `probe` sees predicted steps.
        `seed`: one for the whole call, or one per condition; then each image depends on its own
        condition and seed only (not on the others in the call, `batch_size` or the chunking),
        and equals what a call with that one condition and seed gives (up to the backend's
        arithmetic at another batch size; exact on the CPU backends, tested).
        """
        cfg, strategy, budget = self.resolve(sampler, steps=steps, guidance=guidance, tau=tau,
                                             temperature=temperature, schedule=schedule, strategy=strategy,
                                             budget=budget)
        conds = cond if cond is not None else self.conditions(classes, prompts)
        row_seeds = list(seed) if isinstance(seed, (list, tuple)) else None
        for s in row_seeds if row_seeds is not None else [seed]:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
                raise ConfigError(f"seed must be an integer in 0..2**63-1, got {s!r}")
        if row_seeds is not None and len(row_seeds) != len(conds):
            raise ConfigError(f"{len(row_seeds)} seeds for {len(conds)} conditions: give one seed or one per "
                              "condition")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 65536:
            raise ConfigError(f"batch size must be an integer in 1..65536, got {batch_size!r}")
        if probe is not None and not self.backend.caps.probes:
            raise ConfigError(f"probes run the base model beside the loop, which the {self.backend.name} backend "
                              "cannot (it reuses its output buffers): use the torch backend")
        max_rows = self.backend.caps.max_rows
        rows = min(batch_size, len(conds)) * (2 if cfg.guidance != 0 else 1)
        if max_rows is not None and rows > max_rows:
            raise ConfigError(f"batch size {min(batch_size, len(conds))} needs {rows} rows"
                              f"{' with guidance' if cfg.guidance != 0 else ''}, but the engines' profile allows at "
                              f"most {max_rows}: lower the batch size or rebuild the bundle with a larger --max-batch")
        loop = dict(num_tokens=self.spec.num_tokens, mask_id=self.spec.mask_id, strategy=strategy, budget=budget)
        return self._batches(conds, cfg, loop, seed, row_seeds, batch_size, stats, probe, progress)

    @torch.no_grad()
    def _batches(self, conds, cfg, loop, seed, row_seeds, batch_size, stats, probe,
                 progress) -> Iterator[torch.Tensor]:
        strategy = get_strategy(loop["strategy"])
        # one graph replays a whole chunk: no per-step callbacks, probes or host syncs (mlcache)
        graphed = self._graphs is not None and self.use_graphs and probe is None and strategy.graphable
        # the lock is held for the whole run (the random stream flows from batch to batch); a caller
        # that stops iterating releases it when the generator is closed
        with self._lock:
            g = gens = None  # one generator for the call, or one per row (made per chunk below)
            if row_seeds is None and graphed:
                self._graphs.seed(int(seed))
            elif row_seeds is None:
                g = torch.Generator(device=self.device).manual_seed(int(seed))
            # progress counts the steps the loop runs (`fewer` runs B of them)
            steps, _ = strategy.steps_and_budget(cfg.steps, loop["budget"])
            done, total = 0, len(conds) * steps
            for start in range(0, len(conds), batch_size):
                chunk = conds[start:start + batch_size].to(self.device)
                if row_seeds is not None:
                    seeds = row_seeds[start:start + len(chunk)]
                    gens = self._graphs.seed_rows(seeds) if graphed else \
                        [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
                if graphed:
                    # what the captured loop depends on: the batch's shape, the sampler, strategy and
                    # budget, and whether each row draws from its own generator
                    key = (tuple(chunk.shape), cfg, loop["strategy"], loop["budget"], gens is not None)
                    tokens, graph_stats = self._graphs(key, chunk, lambda c, gen: self._graph_loop(c, gen, cfg, loop),
                                                       row_generators=gens)
                    if stats is not None:
                        stats.add(graph_stats)
                else:
                    step_cb = (lambda i, n: progress(done + i * len(chunk), total)) if progress else None
                    # per batch, not across the yield: the caller's own torch work between batches keeps its threads
                    with torch_threads(self.backend.loop_threads):
                        tokens = generate_tokens(self.backend, chunk, self._uncond, cfg, generator=gens or g,
                                                 stats=stats, probe=probe, on_step=step_cb, **loop)
                done += len(chunk) * steps
                if graphed and progress:
                    progress(done, total)
                yield tokens.cpu()

    def _graph_loop(self, cond, generator, cfg, loop):
        """The loop a graph captures, and its statistics (the same at every replay: the plan fixes them)."""
        stats = HybridStats()
        tokens = generate_tokens(self.backend, cond, self._uncond, cfg, generator=generator, stats=stats, **loop)
        return tokens, stats

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images [n, C, H, W] in [0, 1] (on the CPU) for token grids [n, L]."""
        batch_size = min(batch_size, self.backend.caps.max_rows or batch_size)
        with self._lock, torch_threads(self.backend.loop_threads):
            return torch.cat([self.backend.decode(tokens[i:i + batch_size].to(self.device)).cpu()
                              for i in range(0, len(tokens), batch_size)])

    def generate(self, classes: Sequence[int | str] | None = None, **kwargs) -> torch.Tensor:
        """Images [n, C, H, W] in [0, 1] for the given classes (or `prompts=`); see `generate_tokens`."""
        return self.decode(self.generate_tokens(classes, **kwargs))

    def clear_caches(self) -> None:
        """Drop what the pipeline keeps per shape to run faster: the CUDA graphs and the backend's
        output buffers (both bounded least-recently-used caches, runtime/lru.py), e.g. after a burst
        of unusual batch sizes. The next call makes them again; results already returned stay valid."""
        with self._lock:
            if self._graphs is not None:
                self._graphs.clear()
            self.backend.clear_caches()


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to `n` inside the block (None: left as they are) and put back after
    it: a backend whose runtime brings its own thread pool runs the loop's torch ops on one thread
    (runtime/backends.py `loop_threads`). Process-wide while it lasts, as torch's setting is."""
    before = torch.get_num_threads()
    if n is None or n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bundle_checkpoints(path: Path, doc: Manifest) -> dict:
    """The torch models a bundle carries (for the torch backend)."""
    if not doc.checkpoints:
        raise BundleError(f"bundle {path} holds no torch checkpoints: rebuild it with `migm-export build`")
    models = {name: load_checkpoint(path / e.file) for name, e in doc.checkpoints.items()}
    if "shortcut" in models:  # its frozen embeddings are the base's, not stored with it
        models["shortcut"].load_base_embeddings(models["base"])
    return models


def check_dtype(torch_dtype) -> str:
    """The torch backend's precision for a torch_dtype: float32 (and None) "fp32", bfloat16 "bf16";
    float16 is refused, since the torch backend has no fp16 path (a silent bf16 would be another dtype)."""
    if torch_dtype is None or torch_dtype == torch.float32:
        return "fp32"
    if torch_dtype == torch.bfloat16:
        return "bf16"
    if torch_dtype == torch.float16:
        raise ConfigError("torch_dtype=torch.float16 is not run by migm's torch backend: use torch.bfloat16 (the same "
                          "memory; on a CPU it runs bfloat16 autocast) or torch.float32 (exact), or build an fp16 "
                          "bundle (migm-export build --precision fp16) for ONNX Runtime / TensorRT")
    raise ConfigError(f"torch_dtype {torch_dtype} is not one migm runs; use torch.float32 or torch.bfloat16")


def _seeds(generator, seed: int | None, n: int) -> int | list[int]:
    """The call's seed (one generator, or `seed`, default 0) or one seed per image (a list of generators)."""
    if generator is None:
        return 0 if seed is None else seed
    if seed is not None:
        raise ConfigError("give a generator or a seed, not both")
    draw = lambda g: int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ConfigError(f"{len(generator)} generators for {n} images: give one generator, or one per image")
        return [draw(g) for g in generator]
    return draw(generator)
