"""Reading the tensors of a released `.pth` / `.ckpt` (torch's zip format) without running any code.

torch.save writes a zip: `ARCHIVE/data.pkl` (a pickle of the object tree) and one raw storage per
tensor under `ARCHIVE/data/KEY`. A pickle can name any importable callable, and released Lightning
checkpoints carry objects whose classes come from libraries migm does not use (callback states,
hyper-parameters as `argparse.Namespace`, omegaconf `DictConfig`, Lightning's `AttributeDict`);
`torch.load(weights_only=True)` refuses those, so it would refuse the very files the converters
exist for. This reader unpickles with `SafeUnpickler`:

- the only globals resolved to something real are an allowlist of pure rebuilders: torch's
  tensor and parameter rebuild functions, its storage types (which only name a dtype here),
  `collections.OrderedDict`, and `_codecs.encode` (how protocol 2 spells bytes);
- every other global becomes an inert placeholder class, made here, with no code from the file:
  calling it, building it or setting its state stores nothing and runs nothing. Nothing is ever
  imported, so `os.system` or `builtins.exec` in a pickle is just a name;
- a tensor is not built by the pickle at all: the rebuild function returns a `TensorRef` (dtype,
  shape, stride, offset, storage key). `tensors()` then keeps only the refs the caller asks for,
  checks each one against the storage the archive really holds (a view may not declare more
  elements than its storage has: a 100 KB file cannot describe a 64 GiB stride-0 tensor), and only
  then reads those storages, each once.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

MAX_PICKLE_BYTES = 256 << 20  # the object tree; the tensors' bytes are stored beside it
_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: torch.dtype
    numel: int  # as the pickle declares it; checked against the archive's bytes before use


@dataclass(frozen=True)
class TensorRef:
    """A tensor the pickle describes, not yet read."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    def numel(self) -> int:
        return math.prod(self.shape)


class Inert:
    """What an unknown global becomes: constructible with anything, holding nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):  # pickle's BUILD: the object's state is dropped, never applied
        pass

    def __setitem__(self, key, value):  # SETITEMS on a dict subclass (Lightning's AttributeDict)
        pass

    def append(self, value):  # APPENDS on a list subclass
        pass

    def extend(self, values):
        pass

    def __call__(self, *args, **kwargs):  # an unknown function applied (REDUCE on a placeholder instance)
        return self

    def __repr__(self):
        return f"<ignored {type(self).__module__}.{type(self).__qualname__}>"


def _rebuild_tensor(storage, offset, size, stride, *rest):
    if not isinstance(storage, StorageRef):
        return Inert()
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))):
        raise pickle.UnpicklingError("a tensor with a malformed size, stride or offset")
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, *rest):
    return data  # a Parameter is its tensor; requires_grad and hooks are dropped


def _codecs_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed for protocol-2 bytes only")
    return text.encode("latin1")


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that never imports or calls anything but the allowlist above (see the module doc)."""

    def __init__(self, file, storages: dict[str, int] | None = None):
        super().__init__(file)
        self.storages = storages  # archive storage key -> bytes held; None: no storages resolved
        self.ignored: set[str] = set()
        self._placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        key = (str(module)[:200], str(name)[:200])
        self.ignored.add(".".join(key))
        if key not in self._placeholders:  # a fresh class of ours, named after the global, nothing else
            self._placeholders[key] = type(key[1].rsplit(".", 1)[-1] or "unknown", (Inert,), {"__module__": key[0]})
        return self._placeholders[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:100]}")
        return StorageRef(pid[2], pid[1].dtype, pid[4])


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class Archive:
    """An opened torch zip checkpoint: `.tree` is the unpickled object tree (tensors as TensorRef,
    unknown objects as Inert placeholders); `.ignored` names the globals that became placeholders."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint not found: {self.path}")
        self.size = self.path.stat().st_size
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            hint = " (an old torch format or a plain pickle: load it and torch.save it again)" \
                if isinstance(e, zipfile.BadZipFile) else ""
            raise CheckpointError(f"{self.path} is not a readable torch checkpoint{hint}: {e}") from None
        names = self.zip.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{self.path} is not a readable torch checkpoint (no single ARCHIVE/data.pkl inside)")
        self.prefix = pkls[0][: -len("data.pkl")]
        order = self.prefix + "byteorder"
        if order in names and self.zip.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"{self.path} was saved big-endian; load and save it again on a little-endian "
                                  "machine")
        info = self.zip.getinfo(pkls[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{self.path}: its object tree has {info.file_size} bytes; at most "
                                  f"{MAX_PICKLE_BYTES} are read")
        unpickler = SafeUnpickler(io.BytesIO(self._read(info)))
        try:
            self.tree = unpickler.load()
        except CheckpointError:
            raise
        except Exception as e:  # a truncated or malformed pickle: whatever the stack machine raised
            raise CheckpointError(f"{self.path} is not a readable torch checkpoint: {type(e).__name__}: "
                                  f"{str(e)[:200]}") from None
        self.ignored = sorted(unpickler.ignored)
        self._cache: dict[str, torch.Tensor] = {}

    def _read(self, info: zipfile.ZipInfo) -> bytes:
        # torch never compresses; a compressed entry could inflate far past the file's size
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > self.size:
            raise CheckpointError(f"{self.path}: {info.filename} is compressed or larger than the file; "
                                  "not written by torch.save")
        try:
            return self.zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{self.path} is not a readable torch checkpoint: truncated or corrupt "
                                  f"({info.filename}: {e})") from None

    def storage_bytes(self, key: str) -> int:
        try:
            info = self.zip.getinfo(f"{self.prefix}data/{key}")
        except KeyError:
            raise CheckpointError(f"{self.path}: storage {key[:50]} is missing from the archive") from None
        return info.file_size

    def check(self, name: str, ref: TensorRef) -> None:
        """Refuse a tensor that declares more than the archive holds for it (before anything is read)."""
        item = torch.empty((), dtype=ref.dtype).element_size()
        held = self.storage_bytes(ref.storage.key) // item
        numel = ref.numel()
        extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) + 1 if numel else 0
        if numel > held or extent > held:
            raise CheckpointError(f"{self.path}: {name[:200]} declares {list(ref.shape)} ({numel} elements) over a "
                                  f"storage of {held} elements; a checkpoint holds the data it declares")

    def tensor(self, name: str, ref: TensorRef) -> torch.Tensor:
        """The tensor `ref` describes, read from its storage (each storage read once, shared by views)."""
        self.check(name, ref)
        key = ref.storage.key
        if key not in self._cache:
            info = self.zip.getinfo(f"{self.prefix}data/{key}")
            raw = bytearray(self._read(info))
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            item = torch.empty((), dtype=ref.dtype).element_size()
            self._cache[key] = flat[: len(raw) // item * item].view(ref.dtype)
        return self._cache[key].as_strided(ref.shape, ref.stride, ref.offset)

    def close(self) -> None:
        self.zip.close()


def load_state(path: str | Path, keys: tuple[str, ...] = ()) -> tuple[dict[str, TensorRef], "Archive"]:
    """(name -> TensorRef of the flat state dict, the archive to read them from).

    `keys`: where the state dict sits in the checkpoint, tried in order ("state_dict" for
    Lightning, "model_state_dict" for Halton-MaskGIT); the top-level dict itself when none is
    there. Only string-keyed tensors are kept; hyper-parameters, callbacks and optimizer states
    are placeholders or plain values and are dropped."""
    archive = Archive(path)
    tree = archive.tree
    if not isinstance(tree, dict):
        archive.close()
        raise CheckpointError(f"{path} holds no state dict (it holds a {type(tree).__name__}, not a dict of tensors)")
    state = next((tree[k] for k in keys if isinstance(tree.get(k), dict)), tree)
    found = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, TensorRef)}
    return found, archive


def dry_run(archive: Archive, refs: dict) -> dict:
    """The tensors as meta tensors of their declared shapes, each checked against the storage the
    archive holds for it: a conversion run on these allocates nothing and fails as the real one would."""
    out = {}
    for name, ref in refs.items():
        archive.check(name, ref)
        out[name] = torch.empty_strided(ref.shape, ref.stride, dtype=ref.dtype, device="meta")
    return out


def materialize(archive: Archive, refs: dict) -> dict:
    """The tensors themselves (views of storages read once each)."""
    return {name: archive.tensor(name, ref) for name, ref in refs.items()}
