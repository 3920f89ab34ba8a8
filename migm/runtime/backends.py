"""Execution backends: the model calls the step loop makes, on torch, ONNX Runtime, TensorRT or OpenVINO.

Every backend has the same methods (the loop's `StepModels`) and says what it can do:

    base(tokens [b, L] int64, cond [b, ...] int64)              -> features [b, L, d], logits [b, L, K]
    shortcut(features, new_pos, new_tok, key_mask, ratio, cond) -> next features, logits
    head(features)                                              -> logits  (reuse / extrapolate steps)
    decode(tokens [b, L])                                       -> images [b, C, H, W] in [0, 1]
    caps                                                        `Capabilities` (below)

`cond` is every row's condition (class ids, or prompt ids); a shortcut that does not read it
ignores it. `ort`, `trt` and `openvino` write their outputs into buffers allocated once per output
shape and then reused (ORT IOBinding, TensorRT tensor addresses, OpenVINO tensors over the same
memory). Two buffer sets alternate per shape,
because the loop reads the previous step's features while the next step writes: a result stays
valid until the same component has been called twice more with the same output shapes. The sets
are a least-recently-used cache of BUFFER_SETS entries (runtime/lru.py); `clear_caches()` drops them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from safetensors import safe_open

from ..choices import TORCH_PRECISIONS
from ..engines import openvino, trt
from ..engines.bundle import BundleError
from ..engines.graph_io import check_graph_io
from ..engines.manifest import Artifact, Manifest
from ..engines.ort import ort_session
from ..errors import BackendUnavailable, ConfigError
from ..families import Family, ModelSpec, family_of
from ..models.vqvae import Decoder
from ..sampling.loop import CachedBase
from ..sampling.strategies import CACHED_FORWARD, HEAD, SHORTCUT_MODEL
from .lru import LRU

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.bool: np.bool_,
       torch.int32: np.int32}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool,
          "int32": torch.int32}


@dataclass(frozen=True)
class Capabilities:
    shortcut: bool  # a shortcut model is loaded
    cached: bool = False  # the base model's cached/partial forward (ML-Cache)
    probes: bool = False  # outputs are fresh tensors, so the base can run beside the loop (feature-error probes)
    whole_loop_graphs: bool = False  # the whole loop can be captured as one CUDA graph
    max_rows: int | None = None  # the largest batch the engines accept (CFG rows count)

    @property
    def provides(self) -> frozenset[str]:
        """What of the strategies' needs the backend has (sampling/strategies.py): the head always."""
        has = {HEAD: True, SHORTCUT_MODEL: self.shortcut, CACHED_FORWARD: self.cached}
        return frozenset(need.name for need, yes in has.items() if yes)


class Backend(Protocol):
    name: str
    device: torch.device
    caps: Capabilities
    cached: CachedBase | None
    provides: frozenset[str]  # caps.provides: what the loop's strategies may use
    loop_threads: int | None  # torch's threads while the loop runs on this backend (None: as they are)

    def base(self, tokens: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def head(self, features: torch.Tensor) -> torch.Tensor: ...

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, cond) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def clear_caches(self) -> None: ...


class TorchBackend:
    """The reference backend: the torch modules themselves.

    precision "fp32" runs in float32; "bf16" uses bfloat16 (autocast on CPU, where the
    weights stay fp32 and the features are handed back in fp32 as the training-time
    sampler does; bf16 weights on a GPU, where per-call weight casts would be replayed in
    every CUDA graph)."""

    name = "torch"
    loop_threads = None  # torch does the heavy work itself: all its threads

    def __init__(self, base: torch.nn.Module, decoder: Decoder, shortcut: torch.nn.Module | None = None,
                 device="cpu", precision: str = "bf16"):
        if precision not in TORCH_PRECISIONS:
            raise ConfigError(f"the torch backend runs {' or '.join(TORCH_PRECISIONS)}, not {precision!r}")
        self.family: Family = family_of(base)
        self.device = torch.device(device)
        self.precision = precision
        gpu = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if gpu and precision == "bf16" else torch.float32
        self.base_model = base.to(self.device, self.dtype).eval()
        self.decoder = decoder.to(self.device).eval()
        self.shortcut_model = shortcut.to(self.device, self.dtype).eval() if shortcut is not None else None
        self._autocast = precision == "bf16" and not gpu
        self.cached = self.family.cached_forward(self.base_model, self._autocast)
        self.caps = Capabilities(shortcut=shortcut is not None, cached=self.cached is not None, probes=True,
                                 whole_loop_graphs=gpu)

    @property
    def provides(self) -> frozenset[str]:  # the loop's question (StepModels)
        return self.caps.provides

    def _ctx(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._autocast)

    def base(self, tokens, cond):
        with self._ctx():
            features, logits = self.base_model(tokens, cond)
        # on CPU features stay fp32 between steps: shortcut steps chain from them
        return (features.float(), logits.float()) if self._autocast else (features, logits)

    def head(self, features):
        return self.base_model.head(features.to(self.dtype))

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, cond):
        with self._ctx():
            nxt = self.family.run_shortcut(self.shortcut_model, features, new_pos, new_tok, key_mask,
                                           mask_ratio.to(features.dtype), cond)
        nxt = nxt.float() if self._autocast else nxt
        return nxt, self.head(nxt)

    def decode(self, tokens):
        g = self.base_model.cfg.grid
        return self.decoder(tokens.view(-1, g, g)).float()

    def clear_caches(self) -> None:
        """Nothing to drop: every call returns fresh tensors (a GPU's CUDA graphs are the pipeline's)."""


# Output buffer sets a graph backend keeps. A generation at one batch size uses three (base,
# shortcut, decoder: their outputs' shapes do not change from step to step), so twelve hold four
# batch sizes: migm-serve's padded 1, 2, 4 and 8 (its default --max-batch), or a job's full and
# last chunks with and without guidance. Further shapes evict the least recently used set (made
# again, cheaply, if it comes back) instead of holding memory for every shape ever seen.
BUFFER_SETS = 12


class _Buffers:
    """Output tensors per (component, output shapes), two sets alternating (see module doc); the
    least recently used set is dropped beyond `size`."""

    def __init__(self, device, size: int = BUFFER_SETS):
        self.device = device
        self._sets: LRU[list] = LRU(size)

    def get(self, key, make: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        entry = self._sets.get_or_make(key, lambda: [make(), make(), 0])
        entry[2] ^= 1
        return entry[entry[2]]

    def clear(self) -> None:
        self._sets.clear()

    def __len__(self) -> int:
        return len(self._sets)


class _GraphBackend:
    """What the ort and trt backends share: the bundle's spec, the base head read from its torch
    checkpoint (reuse/extrapolate steps), and the feeds by the graphs' input order."""

    # On a CPU the model calls run on the runtime's own thread pool (ONNX Runtime's, OpenVINO's),
    # and torch only runs the small ops between them (the sampling kernel, gathers). With its
    # default threads torch's OpenMP workers spin for a while after each of those ops, on the very
    # cores the runtime's pool needs next: one torch thread there, measured on 2 cores (quiet,
    # tiny-animals, N = 16, B = 6): OpenVINO bf16 12.1 -> 14.8 images/s at batch 1, 20.2 -> 20.1 at
    # batch 32; ONNX Runtime 4.5 -> 4.9 and 5.4 -> 5.4 (benchmarks/RESULTS.md).
    loop_threads: int | None = 1

    def _setup(self, bundle: Path, doc: Manifest, spec: ModelSpec, family: Family, names: list[str]):
        self.family, self.spec = family, spec
        self.buffers = _Buffers(self.device)
        self.cached = None
        self.head = _head_from_bundle(bundle, doc, family, spec, self.device)
        self.has_shortcut = "shortcut" in names

    def clear_caches(self) -> None:
        """Drop the output buffers (made again on the next call); results already returned stay valid."""
        self.buffers.clear()

    @property
    def provides(self) -> frozenset[str]:  # the loop's question (StepModels)
        return self.caps.provides

    def _feeds(self, name: str, *values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs by the graph's order; a trailing condition the graph does not take is dropped."""
        return {s.name: v for s, v in zip(self.spec_io[name].inputs, values)}

    def base(self, tokens, cond):
        return tuple(self._run("base", self._feeds("base", tokens, cond)))

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, cond):
        return tuple(self._run("shortcut", self._feeds("shortcut", features, new_pos, new_tok, key_mask, mask_ratio,
                                                       cond)))

    def decode(self, tokens):
        g = self.spec.grid
        # decoded images are handed to the caller: a fresh tensor, not a reused buffer
        return self._run("decoder", {"tokens": tokens.view(-1, g, g)})[0].float().clone()


def _output_shapes(entry: Artifact, dims: dict[str, int]) -> tuple[tuple[int, ...], ...]:
    """A component's output shapes, its dynamic axes (batch, ...) read from the inputs' `dims`: the
    buffers' key, since the outputs depend on no other input size (the shortcut's new-token count
    changes every step and changes no output)."""
    return tuple(tuple(dims[d] if isinstance(d, str) else d for d in spec.shape) for spec in entry.outputs)


def _head_from_bundle(bundle: Path, doc: Manifest, family: Family, spec: ModelSpec, device):
    """The base model's head from the bundle's torch checkpoint, reading only its rows (the whole
    checkpoint can be many GB)."""
    entry = doc.checkpoints.get("base")
    if entry is None:
        raise BundleError(f"bundle {bundle} holds no base checkpoint: rebuild it with `migm-export build`")
    with safe_open(str(bundle / f"{entry.file}.safetensors"), framework="pt") as fh:
        return family.read_head(fh, spec, device)


class OrtBackend(_GraphBackend):
    """ONNX Runtime sessions over the bundle's .onnx files, with IOBinding: inputs are bound
    by address from the loop's tensors, outputs into preallocated buffers (CPU here; with
    onnxruntime-gpu the TensorRT and CUDA providers bind CUDA tensors the same way)."""

    name = "ort"

    def __init__(self, bundle: str | Path, doc: Manifest, spec: ModelSpec, family: Family, device="cpu",
                 threads: int = 0):
        bundle = Path(bundle)
        self.device = torch.device(device)
        self.sessions, self.spec_io = {}, {}
        for name, entry in doc.components.items():
            if not entry.file.endswith(".onnx"):
                raise BundleError(f"bundle {bundle}: {entry.file} is not ONNX; the ort backend needs an "
                                  "`--backend ort` bundle")
            self.sessions[name] = ort_session(bundle / entry.file, self.device.type, self.device.index or 0,
                                              threads)
            s = self.sessions[name]  # the graph's own I/O, as read from its header, against the manifest
            check_graph_io(name, entry, s.get_inputs(), s.get_outputs(), bundle / entry.file)
            self.spec_io[name] = entry
        self._setup(bundle, doc, spec, family, list(self.sessions))
        self.caps = Capabilities(shortcut=self.has_shortcut)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        session, entry = self.sessions[name], self.spec_io[name]
        binding = session.io_binding()
        dev = "cuda" if self.device.type == "cuda" else "cpu"
        shapes = {}
        for spec in entry.inputs:
            t = feeds[spec.name]
            want = _TORCH[spec.dtype]
            t = t.to(want).contiguous() if t.dtype != want or not t.is_contiguous() else t
            feeds[spec.name] = t  # keep the tensor alive until the run is over
            binding.bind_input(spec.name, dev, self.device.index or 0, _NP[want], tuple(t.shape), t.data_ptr())
            for axis, dim in zip(t.shape, spec.shape):
                if isinstance(dim, str):
                    shapes[dim] = axis
        sizes = _output_shapes(entry, shapes)
        outs = self.buffers.get((name, sizes), lambda: [
            torch.empty(size, dtype=_TORCH[spec.dtype], device=self.device)
            for size, spec in zip(sizes, entry.outputs)])
        for spec, t in zip(entry.outputs, outs):
            binding.bind_output(spec.name, dev, self.device.index or 0, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        if dev == "cuda":  # ORT runs on its own stream: torch's writes to the inputs must be done first
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return outs


class OpenVinoBackend(_GraphBackend):
    """OpenVINO on the CPU over the bundle's IR (.xml + .bin), each component compiled once
    (engines/openvino.py: bf16 hint where the CPU has AMX/AVX512-BF16, f32 elsewhere and for fp32
    components), one infer request each. No copies: inputs are OpenVINO tensors over the loop's
    torch tensors' memory, outputs are written straight into preallocated torch buffers.
    `inference_precision` says the hint its bf16/int8 components run with here ("f32" where all
    are fp32); `hints` has it per component."""

    name = "openvino"

    def __init__(self, bundle: str | Path, doc: Manifest, spec: ModelSpec, family: Family, threads: int = 0):
        bundle = Path(bundle)
        if not openvino.available():
            raise BackendUnavailable(f"bundle {bundle} holds OpenVINO IR, and OpenVINO is not installed here: "
                                     f"{openvino.INSTALL}, or run it with --backend torch, or build an ONNX Runtime "
                                     "bundle with `migm-export build --backend ort`")
        self._ov = openvino.import_openvino()
        self.device = torch.device("cpu")
        self.requests, self.spec_io, self.hints = {}, {}, {}
        for name, entry in doc.components.items():
            xml = bundle / entry.file
            if not entry.file.endswith(".xml"):
                raise BundleError(f"bundle {bundle}: {entry.file} is not OpenVINO IR; the openvino backend needs "
                                  "a `--backend openvino` bundle")
            if entry.precision not in openvino.PRECISIONS:
                raise BundleError(f"bundle {bundle}: {entry.file} is {entry.precision}, which the openvino "
                                  f"backend does not run ({', '.join(openvino.PRECISIONS)}): rebuild it with "
                                  "`migm-export build --backend openvino --precision bf16`")
            compiled = openvino.compile_ir(xml, entry.precision, threads)
            openvino.check_io(compiled, entry, xml)
            self.requests[name] = compiled.create_infer_request()
            self.spec_io[name] = entry
            self.hints[name] = openvino.compile_config(entry.precision, threads)["INFERENCE_PRECISION_HINT"]
        self.inference_precision = "bf16" if "bf16" in self.hints.values() else "f32"
        self._setup(bundle, doc, spec, family, list(self.requests))
        self.caps = Capabilities(shortcut=self.has_shortcut)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        req, entry, tensor = self.requests[name], self.spec_io[name], self._ov.Tensor
        shapes = {}
        for i, spec in enumerate(entry.inputs):
            t = feeds[spec.name]
            want = _TORCH[spec.dtype]
            t = t.to(want).contiguous() if t.dtype != want or not t.is_contiguous() else t
            feeds[spec.name] = t  # keep the tensor alive until the run is over
            req.set_input_tensor(i, tensor(t.numpy(), shared_memory=True))
            for axis, dim in zip(t.shape, spec.shape):
                if isinstance(dim, str):
                    shapes[dim] = axis
        sizes = _output_shapes(entry, shapes)
        outs = self.buffers.get((name, sizes), lambda: [
            torch.empty(size, dtype=_TORCH[spec.dtype]) for size, spec in zip(sizes, entry.outputs)])
        for i, t in enumerate(outs):
            req.set_output_tensor(i, tensor(t.numpy(), shared_memory=True))
        req.start_async()  # start + wait: `infer()` would also build a dict of the results
        req.wait()
        return outs


class TrtBackend(_GraphBackend):
    """TensorRT engines (either flavour: the one the manifest names) run with `execute_async_v3` on
    the current torch CUDA stream, every tensor bound by address (`set_tensor_address`) to
    preallocated torch CUDA buffers. The loop is not captured into one CUDA graph here: the
    shortcut's new-token count changes from step to step, and TensorRT wants a graph per input
    shape. The caller checks first that the engines suit this machine (`trt.engine_problem`)."""

    name = "trt"
    loop_threads = None  # the engines run on the GPU: torch's CPU threads are not in their way

    def __init__(self, bundle: str | Path, doc: Manifest, spec: ModelSpec, family: Family, device="cuda"):
        bundle = Path(bundle)
        if doc.trt is None:
            raise BundleError(f"bundle {bundle} was built by an older migm (no TensorRT flavour recorded): build it "
                              "again with `migm-export build --backend trt`")
        flavour = doc.trt.flavour
        trt.import_flavour(flavour)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailable("the trt backend runs on a CUDA GPU only")
        self.engines, self.contexts, self.spec_io = {}, {}, {}
        for name, entry in doc.components.items():
            if not entry.file.endswith(".engine"):
                raise BundleError(f"bundle {bundle}: {entry.file} is not a TensorRT engine; the trt backend "
                                  "needs a `--backend trt` bundle")
            with torch.cuda.device(self.device):
                engine = trt.load_engine(bundle / entry.file, flavour)
                self.contexts[name] = engine.create_execution_context()
            self.engines[name], self.spec_io[name] = engine, entry
        self._setup(bundle, doc, spec, family, list(self.engines))
        # the largest batch every engine's optimization profile accepts (CFG rows count)
        max_rows = min((max(hi[0] for _, _, hi in e.profile.values()) for e in self.spec_io.values() if e.profile),
                       default=None)
        self.caps = Capabilities(shortcut=self.has_shortcut, max_rows=max_rows)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        ctx, entry = self.contexts[name], self.spec_io[name]
        for spec in entry.inputs:
            t = feeds[spec.name]
            want = _TORCH[spec.dtype]
            t = t.to(want).contiguous() if t.dtype != want or not t.is_contiguous() else t
            feeds[spec.name] = t
            if not ctx.set_input_shape(spec.name, tuple(t.shape)):
                raise ConfigError(f"the {name} engine does not accept {spec.name} of shape {list(t.shape)} "
                                  "(outside its optimization profile): rebuild with a larger --max-batch")
            ctx.set_tensor_address(spec.name, t.data_ptr())
        # the engine's output shapes for these input shapes (set above): what the buffers are keyed by
        sizes = tuple(tuple(ctx.get_tensor_shape(o.name)) for o in entry.outputs)
        outs = self.buffers.get((name, sizes), lambda: [
            torch.empty(size, dtype=_TORCH[o.dtype], device=self.device)
            for size, o in zip(sizes, entry.outputs)])
        for spec, t in zip(entry.outputs, outs):
            ctx.set_tensor_address(spec.name, t.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise BundleError(f"TensorRT failed to run the {name} engine")
        return outs
