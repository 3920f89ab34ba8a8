"""Execution backends: the model calls the step loop makes, on torch, ONNX Runtime or TensorRT.

Every backend offers the same five things:

    base(tokens [b, L] int64, labels [b] int64)          -> features [b, L, d], logits [b, L, K]
    shortcut(features, new_pos, new_tok, key_mask, ratio) -> next features, logits
    head(features)                                        -> logits  (reuse / extrapolate steps)
    decode(tokens [b, L])                                  -> images [b, C, H, W] in [0, 1]
    device                                                 where the loop's tensors live

`ort` and `trt` write their outputs into buffers allocated once per input shape and then
reused (ORT IOBinding, TensorRT tensor addresses). Two buffer sets alternate per shape,
because the loop reads the previous step's features while the next step writes: a result
stays valid until the same component has been called twice more with the same shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..engines.bundle import BundleError
from ..models.maskgit import MaskGIT
from ..models.shortcut import Shortcut
from ..models.vqvae import Decoder
from ..sampling.loop import CachedBase

BACKENDS = ("auto", "torch", "ort", "trt")

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.bool: np.bool_,
       torch.int32: np.int32}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool,
          "int32": torch.int32}


class TorchBackend:
    """The reference backend: the torch modules themselves.

    precision "fp32" runs in float32; "bf16" uses bfloat16 (autocast on CPU, where the
    weights stay fp32 and the features are handed back in fp32 as the training-time
    sampler does; bf16 weights on a GPU, where per-call weight casts would be replayed in
    every CUDA graph)."""

    name = "torch"

    def __init__(self, base: MaskGIT, decoder: Decoder, shortcut: Shortcut | None = None, device="cpu",
                 precision: str = "bf16"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"the torch backend runs fp32 or bf16, not {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        gpu = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if gpu and precision == "bf16" else torch.float32
        self.base_model = base.to(self.device, self.dtype).eval()
        self.decoder = decoder.to(self.device).eval()
        self.shortcut_model = shortcut.to(self.device, self.dtype).eval() if shortcut is not None else None
        self._autocast = precision == "bf16" and not gpu
        # ML-Cache's cached/partial forward exists for the maskgit family only
        self.cached = CachedBase(self.base_model, autocast=self._autocast) if isinstance(base, MaskGIT) else None
        self.has_shortcut = shortcut is not None

    def _ctx(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._autocast)

    def base(self, tokens, labels):
        with self._ctx():
            features, logits = self.base_model(tokens, labels)
        # on CPU features stay fp32 between steps: shortcut steps chain from them
        return (features.float(), logits.float()) if self._autocast else (features, logits)

    def head(self, features):
        return self.base_model.head(features.to(self.dtype))

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt=None):
        """`prompt` (both CFG branches' prompt ids) for the llada family's shortcut."""
        extra = () if prompt is None else (prompt,)
        with self._ctx():
            nxt = self.shortcut_model(features, new_pos, new_tok, key_mask, mask_ratio.to(features.dtype), *extra)
        nxt = nxt.float() if self._autocast else nxt
        return nxt, self.head(nxt)

    def decode(self, tokens):
        g = self.base_model.cfg.grid
        return self.decoder(tokens.view(-1, g, g)).float()


class _Buffers:
    """Output tensors per (component, input shapes), two sets alternating (see module doc)."""

    def __init__(self, device):
        self.device = device
        self._sets: dict[tuple, list] = {}

    def get(self, key, make: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        entry = self._sets.get(key)
        if entry is None:
            entry = self._sets[key] = [make(), make(), 0]
        entry[2] ^= 1
        return entry[entry[2]]


def _head_from_bundle(bundle: Path, doc: dict, device):
    """The base model's head (code embeddings and per-position bias) from the bundle's torch checkpoint."""
    from safetensors import safe_open

    entry = doc.get("checkpoints", {}).get("base")
    if entry is None:
        raise BundleError(f"bundle {bundle} holds no base checkpoint (built by an older migm): rebuild it")
    k = doc["codebook_size"]
    # read only the head's rows (the whole checkpoint can be many GB)
    with safe_open(str(bundle / f"{entry['file']}.safetensors"), framework="pt") as fh:
        if doc.get("family") == "llada":  # the LM head's image-code rows
            v = doc["config"]["base"]["text_vocab"]
            w = fh.get_slice("lm_head.weight")[v:v + k].float().T.contiguous().to(device)
            return lambda f: f.float() @ w
        w = fh.get_slice("tok_emb.weight")[:k].float().T.contiguous().to(device)
        bias = fh.get_tensor("bias").float().to(device)
    return lambda f: f.float() @ w + bias


class OrtBackend:
    """ONNX Runtime sessions over the bundle's .onnx files, with IOBinding: inputs are bound
    by address from the loop's tensors, outputs into preallocated buffers (CPU here; with
    onnxruntime-gpu the TensorRT and CUDA providers bind CUDA tensors the same way)."""

    name = "ort"

    def __init__(self, bundle: str | Path, doc: dict, device="cpu", threads: int = 0):
        import onnxruntime as ort

        bundle = Path(bundle)
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError("the ort backend on a GPU needs onnxruntime-gpu (pip install 'migm[gpu]')")
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})] + providers
            if "TensorrtExecutionProvider" in available:  # ORT's TensorRT provider first, where it is built in
                providers.insert(0, ("TensorrtExecutionProvider", {"device_id": self.device.index or 0}))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # ORT's pool spins after each run by default, starving the torch ops (sampling kernel,
        # head) that run between calls on the same cores: 50x slower kernels seen on 2 cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions, self.spec = {}, {}
        for name, entry in doc["components"].items():
            if not entry["file"].endswith(".onnx"):
                raise BundleError(f"bundle {bundle}: {entry['file']} is not ONNX; the ort backend needs an "
                                  "`--backend ort` bundle")
            try:
                self.sessions[name] = ort.InferenceSession(str(bundle / entry["file"]), opts, providers=providers)
            except Exception as e:  # ORT raises its own exception types for bad graphs
                raise BundleError(f"bundle {bundle}: ONNX Runtime cannot load {entry['file']}: "
                                  f"{str(e).splitlines()[0]}") from None
            self.spec[name] = entry
        self.has_shortcut = "shortcut" in self.sessions
        self.buffers = _Buffers(self.device)
        self.head = _head_from_bundle(bundle, doc, self.device)
        self.cached = None

    def _run(self, name: str, feeds: dict[str, torch.Tensor], out_shapes: list[tuple]) -> list[torch.Tensor]:
        session, entry = self.sessions[name], self.spec[name]
        binding = session.io_binding()
        dev = "cuda" if self.device.type == "cuda" else "cpu"
        for spec in entry["inputs"]:
            t = feeds[spec["name"]]
            want = _TORCH[spec["dtype"]]
            t = t.to(want).contiguous() if t.dtype != want or not t.is_contiguous() else t
            feeds[spec["name"]] = t  # keep the tensor alive until the run is over
            binding.bind_input(spec["name"], dev, self.device.index or 0, _NP[want], tuple(t.shape), t.data_ptr())
        key = (name,) + tuple(tuple(t.shape) for t in feeds.values())
        outs = self.buffers.get(key, lambda: [
            torch.empty(shape, dtype=_TORCH[spec["dtype"]], device=self.device)
            for spec, shape in zip(entry["outputs"], out_shapes)])
        for spec, t in zip(entry["outputs"], outs):
            binding.bind_output(spec["name"], dev, self.device.index or 0, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        if dev == "cuda":  # ORT runs on its own stream: torch's writes to the inputs must be done first
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return outs

    def base(self, tokens, labels):
        """`labels`: class ids, or prompt ids for a llada bundle (the graph's second input)."""
        b, n = tokens.shape
        d, k = _widths(self.spec["base"])
        cond = self.spec["base"]["inputs"][1]["name"]
        return tuple(self._run("base", {"tokens": tokens, cond: labels}, [(b, n, d), (b, n, k)]))

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt=None):
        b, n, d = features.shape
        k = _widths(self.spec["shortcut"])[1]
        feeds = {"features": features, "new_pos": new_pos, "new_tok": new_tok, "key_mask": key_mask,
                 "mask_ratio": mask_ratio}
        if prompt is not None:
            feeds["prompt"] = prompt
        return tuple(self._run("shortcut", feeds, [(b, n, d), (b, n, k)]))

    def decode(self, tokens):
        spec = self.spec["decoder"]["outputs"][0]["shape"]
        g = int(round(tokens.shape[1] ** 0.5))
        # decoded images are handed to the caller: a fresh tensor, not a reused buffer
        return self._run("decoder", {"tokens": tokens.view(-1, g, g)}, [(tokens.shape[0], *spec[1:])])[0].float().clone()


def _widths(entry: dict) -> tuple[int, int]:
    """Feature width d and codebook size K from a component's output shapes."""
    shapes = [o["shape"] for o in entry["outputs"]]
    return int(shapes[0][-1]), int(shapes[1][-1])


class TrtBackend:
    """TensorRT engines run with `execute_async_v3` on the current torch CUDA stream, every
    tensor bound by address (`set_tensor_address`) to preallocated torch CUDA buffers. The
    loop is not captured into one CUDA graph here: the shortcut's new-token count changes
    from step to step, and TensorRT wants a graph per input shape (a later step)."""

    name = "trt"

    def __init__(self, bundle: str | Path, doc: dict, device="cuda"):
        from ..engines.trt import import_tensorrt, load_engine

        import_tensorrt()
        bundle = Path(bundle)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise RuntimeError("the trt backend runs on a CUDA GPU only")
        self.engines, self.contexts, self.spec = {}, {}, {}
        for name, entry in doc["components"].items():
            if not entry["file"].endswith(".engine"):
                raise BundleError(f"bundle {bundle}: {entry['file']} is not a TensorRT engine; the trt backend "
                                  "needs a `--backend trt` bundle")
            engine = load_engine(bundle / entry["file"], entry)
            self.engines[name], self.contexts[name], self.spec[name] = engine, engine.create_execution_context(), entry
        self.has_shortcut = "shortcut" in self.engines
        # the largest batch every engine's optimization profile accepts (CFG rows count)
        self.max_rows = min((max(hi[0] for _, _, hi in e.get("profile", {}).values()) for e in self.spec.values()
                             if e.get("profile")), default=None)
        self.buffers = _Buffers(self.device)
        self.head = _head_from_bundle(bundle, doc, self.device)
        self.cached = None

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        ctx, entry = self.contexts[name], self.spec[name]
        for spec in entry["inputs"]:
            t = feeds[spec["name"]]
            want = _TORCH[spec["dtype"]]
            t = t.to(want).contiguous() if t.dtype != want or not t.is_contiguous() else t
            feeds[spec["name"]] = t
            if not ctx.set_input_shape(spec["name"], tuple(t.shape)):
                raise ValueError(f"the {name} engine does not accept {spec['name']} of shape {list(t.shape)} "
                                 "(outside its optimization profile): rebuild with a larger --max-batch")
            ctx.set_tensor_address(spec["name"], t.data_ptr())
        key = (name,) + tuple(tuple(t.shape) for t in feeds.values())
        outs = self.buffers.get(key, lambda: [
            torch.empty(tuple(ctx.get_tensor_shape(o["name"])), dtype=_TORCH[o["dtype"]], device=self.device)
            for o in entry["outputs"]])
        for spec, t in zip(entry["outputs"], outs):
            ctx.set_tensor_address(spec["name"], t.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {name} engine")
        return outs

    def base(self, tokens, labels):
        cond = self.spec["base"]["inputs"][1]["name"]
        return tuple(self._run("base", {"tokens": tokens, cond: labels}))

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt=None):
        feeds = {"features": features, "new_pos": new_pos, "new_tok": new_tok, "key_mask": key_mask,
                 "mask_ratio": mask_ratio}
        if prompt is not None:
            feeds["prompt"] = prompt
        return tuple(self._run("shortcut", feeds))

    def decode(self, tokens):
        g = int(round(tokens.shape[1] ** 0.5))
        return self._run("decoder", {"tokens": tokens.view(-1, g, g)})[0].float().clone()


def trt_usable() -> bool:
    """TensorRT importable and a CUDA GPU present (never touch TensorRT without one)."""
    if not torch.cuda.is_available():
        return False
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True
