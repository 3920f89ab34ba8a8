"""The bundle manifest as one typed tree: what `manifest.json` holds, declared once.

The builder writes it (`Manifest.to_dict`), the rebuild copies it with `dataclasses.replace`, the
loader reads it (`Manifest.from_dict`: every key known, every required key present, every value
of its declared type and range, then the checks that span fields) and every reader uses its
attributes. A new field is one edit here (a field with its type, and `None` as default where old
bundles lack it); a change old bundles cannot meet is that edit plus a bump of `VERSION`, and the
loader refuses the old version naming the command that rebuilds it.

Types the reader understands: str, int (a count, >= 0), float (finite, >= 0), bool, Literal[...],
`X | None`, list[X], dict[str, X], Any (a JSON value, checked by the field's own check) and the
dataclasses below. A field whose default is None is optional (absent in JSON where None); every
other field is required (a `X | None` field without that default is written as null). A field's
`metadata={"check": (predicate, what)}` adds a check of its value, `what` saying what it must be.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Union

from ..choices import BUILD_PRECISIONS, BUNDLE_BACKENDS, PRECISIONS
from ..errors import BundleError, ConfigError, MigmError
from ..families import FAMILIES, Family, ModelSpec, family
from ..sampling.config import SamplerConfig
from .graph_io import check_manifest_io

FORMAT = "migm-bundle"
VERSION = 2  # 2: the manifest's schema, spec and digest
COMPONENTS = ("base", "shortcut", "decoder")
CHECKPOINTS = ("base", "vq", "shortcut")
DTYPES = ("float32", "float16", "int64", "int32", "bool")
TRT_FLAVOURS = ("tensorrt", "tensorrt-rtx")
MAX_NAME = 200  # class names become file names (slugged and cut), but a page-long one is no class name
MAX_COUNT = 1 << 50


def _check(predicate, what: str) -> dict:
    return {"check": (predicate, what)}


def _hex(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


SHA256 = _check(_hex, "a sha256 (64 hex digits)")
HEX_MAP = _check(lambda d: all(map(_hex, d.values())), "sha256s (64 hex digits each)")


@dataclass
class TensorSpec:
    """A graph input or output: its name, dtype and shape (ints fixed, strings named dynamic axes)."""
    name: str
    dtype: Literal[DTYPES]
    shape: list[int | str] = field(metadata=_check(lambda s: len(s) <= 8, "a shape of at most 8 axes"))


@dataclass
class GraphFile:
    """The ONNX graph a TensorRT engine was built from, kept in the bundle for rebuilds."""
    file: str
    sha256: str = field(default="0" * 64, metadata=SHA256)
    bytes: int = 0
    data_file: str | None = None  # ONNX weights over 2 GB, beside the graph
    data_sha256: str | None = field(default=None, metadata=SHA256)
    data_bytes: int | None = None


@dataclass
class Artifact:
    """One component's artifact (ONNX graph, TensorRT engine or OpenVINO IR) and what it was built as."""
    file: str
    precision: Literal[PRECISIONS]
    backend: Literal[BUNDLE_BACKENDS]
    inputs: list[TensorSpec] = field(metadata=_check(lambda v: 0 < len(v) <= 16, "a list of 1..16 tensors"))
    outputs: list[TensorSpec] = field(metadata=_check(lambda v: 0 < len(v) <= 16, "a list of 1..16 tensors"))
    rel_error_vs_torch: float
    sha256: str = field(default="0" * 64, metadata=SHA256)
    bytes: int = 0
    data_file: str | None = None  # ONNX external weights, or the IR's .bin
    data_sha256: str | None = field(default=None, metadata=SHA256)
    data_bytes: int | None = None
    profile: dict[str, list[list[int]]] | None = None  # TensorRT: min/opt/max shape per input
    onnx: GraphFile | None = None  # TensorRT: the engine's source graph
    build_seconds: float | None = None
    # --precision best: each candidate precision's ms per call, by rows
    measured_ms: dict[str, dict[str, float]] | None = field(default=None, metadata=_check(
        lambda m: 0 < len(m) <= 8 and all(0 < len(t) <= 16 and all(r.isdigit() and len(r) <= 8 for r in t)
                                          for t in m.values()), "precisions mapped to milliseconds by rows"))

    def files(self) -> list[tuple[str, str, int | None, str]]:
        """(path, sha256, bytes, what) of every file this component names (artifact, weights, source graph)."""
        out = [(self.file, self.sha256, self.bytes, "file")]
        if self.data_file:
            out.append((self.data_file, self.data_sha256, self.data_bytes, "weights"))
        if self.onnx:
            out.append((self.onnx.file, self.onnx.sha256, self.onnx.bytes, "source graph"))
            if self.onnx.data_file:
                out.append((self.onnx.data_file, self.onnx.data_sha256, self.onnx.data_bytes, "source weights"))
        return out


@dataclass
class Checkpoint:
    """A source checkpoint the torch backend runs: FILE.safetensors and FILE.json."""
    file: str
    sha256: dict[str, str] = field(default_factory=dict, metadata=_check(
        lambda d: set(d) == {"safetensors", "json"} and all(map(_hex, d.values())),
        "the sha256 of its .safetensors and .json"))

    def files(self) -> list[tuple[str, str]]:
        return [(f"{self.file}.{ext}", digest) for ext, digest in self.sha256.items()]


@dataclass
class Tokenizer:
    """A text model's prompt tokenizer (save_pretrained layout), by its format's file names."""
    dir: str
    files: list[str] = field(metadata=_check(lambda f: f and all("/" not in n for n in f),
                                             "a list of file names (no folders)"))
    sha256: dict[str, str] = field(default_factory=dict, metadata=HEX_MAP)


@dataclass
class Calibration:
    """The INT8 calibration inputs, reused by rebuilds and later builds of the same checkpoints."""
    file: str
    sha256: str = field(metadata=SHA256)


@dataclass
class TrtInfo:
    """What TensorRT bundles' engines were built with and for."""
    flavour: Literal[TRT_FLAVOURS]
    version: str
    compute_capabilities: list[str] = field(metadata=_check(lambda v: all(len(c) <= 16 for c in v),
                                                            "compute capabilities like 8.9"))
    hardware_compat: str | None
    opt_level: int = field(metadata=_check(lambda v: v <= 5, "an optimization level 0..5"))


@dataclass
class OpenVinoInfo:
    """OpenVINO's version, the inference precision chosen at the build, and the CPU it was chosen on."""
    version: str = field(metadata=_check(lambda v: len(v) <= 64, "a version"))
    inference_precision: Literal["bf16", "f32"]
    cpu: str = field(metadata=_check(lambda v: len(v) <= 200, "a CPU's name"))


@dataclass
class Configs:
    """The models' own configs, as their checkpoints hold them."""
    base: dict[str, Any]
    vq: dict[str, Any]
    shortcut: dict[str, Any] | None


@dataclass
class Manifest:
    family: str = field(metadata=_check(lambda v: v in FAMILIES, f"a model family ({', '.join(FAMILIES)})"))
    precision: Literal[BUILD_PRECISIONS]
    backend: Literal[BUNDLE_BACKENDS]
    config: Configs
    spec: dict[str, Any]  # the ModelSpec of config.base, written out for readers without migm
    class_names: list[str] = field(metadata=_check(lambda v: all(0 < len(n) <= MAX_NAME for n in v),
                                                   f"names of 1..{MAX_NAME} characters"))
    sampling: SamplerConfig
    sources: dict[str, str]  # checkpoint digests: a later build of the same checkpoints reuses calibration
    components: dict[str, Artifact] = field(metadata=_check(
        lambda c: set(c) <= set(COMPONENTS) and {"base", "decoder"} <= set(c), f"some of {', '.join(COMPONENTS)}, "
        "base and decoder among them"))
    checkpoints: dict[str, Checkpoint] = field(metadata=_check(lambda c: set(c) <= set(CHECKPOINTS),
                                                               f"some of {', '.join(CHECKPOINTS)}"))
    tools: dict[str, str]
    tokenizer: Tokenizer | None = None
    calibration: Calibration | None = None
    trt: TrtInfo | None = None
    openvino: OpenVinoInfo | None = None
    digest: str = field(default="0" * 64, metadata=SHA256)  # of everything else (bundle.manifest_digest)
    format: str = FORMAT
    version: int = VERSION

    @property
    def fam(self) -> Family:
        return family(self.family)

    @property
    def model_spec(self) -> ModelSpec:
        return self.fam.spec_from_config(self.config.base)

    def files(self) -> list[tuple[str, str, int | None, str]]:
        """(path, sha256, bytes or None, what) of every file the manifest names."""
        out = [(rel, sha, size, f"component {name} {what}") for name, c in self.components.items()
               for rel, sha, size, what in c.files()]
        out += [(rel, sha, None, "checkpoint file") for c in self.checkpoints.values() for rel, sha in c.files()]
        if self.tokenizer:
            out += [(f"{self.tokenizer.dir}/{n}", self.tokenizer.sha256[n], None, "tokenizer file")
                    for n in self.tokenizer.files]
        if self.calibration:
            out.append((self.calibration.file, self.calibration.sha256, None, "calibration data"))
        return out

    def to_dict(self) -> dict:
        return _dump(self)

    @classmethod
    def from_dict(cls, doc) -> "Manifest":
        """The manifest in `doc` (parsed JSON), checked: a BundleError naming the first wrong field."""
        if not isinstance(doc, dict):
            raise BundleError("the manifest is not a JSON object")
        if doc.get("format") != FORMAT:
            raise BundleError("it is not a migm bundle manifest (format)")
        if doc.get("version") != VERSION:
            raise BundleError(f"it is bundle version {doc.get('version')}; this migm reads version {VERSION}: "
                              "build it again with `migm-export build` (or `migm-export convert` for a Hub model)")
        m = _load(cls, doc, "manifest")
        m._check()
        return m

    def _check(self) -> None:
        """What spans fields: the spec is config.base's, class names fit it, sampling fits its grid,
        the recorded graph shapes are the spec's."""
        fam = self.fam
        try:
            spec = fam.spec_from_config(self.config.base).validate()
        except (TypeError, ValueError) as e:
            raise BundleError(f"config.base does not describe a {fam.name} model: {e}") from None
        if self.spec != spec.to_dict():
            raise BundleError("spec does not match config.base")
        if len(self.class_names) not in (0, spec.num_classes):
            raise BundleError(f"class_names has {len(self.class_names)} names for {spec.num_classes} classes")
        try:
            self.sampling.validate(spec.num_tokens)
        except ConfigError as e:
            raise BundleError(f"sampling: {e}") from None
        try:
            check_manifest_io(self)
        except MigmError as e:
            raise BundleError(str(e)) from None


# ---- reading and writing the tree ----

def _optional(f) -> bool:
    return f.default is None


def _dump(obj):
    if isinstance(obj, SamplerConfig):
        return obj.to_dict()
    if is_dataclass(obj):
        return {f.name: _dump(getattr(obj, f.name)) for f in fields(obj)
                if not (_optional(f) and getattr(obj, f.name) is None)}
    if isinstance(obj, dict):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_dump(v) for v in obj]
    return obj


def _load(cls, doc, where: str):
    if not isinstance(doc, dict):
        raise BundleError(f"{where} is not an object")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(map(str, doc)) - set(known))
    if unknown:
        raise BundleError(f"{where} has unknown keys {', '.join(unknown)}")
    missing = sorted(n for n, f in known.items() if n not in doc and not _optional(f))
    if missing:
        raise BundleError(f"{where} lacks {', '.join(missing)}")
    values = {}
    for name, f in known.items():
        if name not in doc:
            continue
        at = f"{where}.{name}" if where != "manifest" else name
        value = _value(hints[name], doc[name], at)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check[0](value):
            raise BundleError(f"{at} must be {check[1]}")
        values[name] = value
    return cls(**values)


def _value(tp, v, at: str):
    """`v` read as type `tp`, or a BundleError saying what `at` must be."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return v
    if tp is SamplerConfig:  # its own reader (unknown keys refused, an older key name read)
        try:
            return SamplerConfig.from_dict(v)
        except (ConfigError, TypeError) as e:
            raise BundleError(f"{at}: {e}") from None
    if is_dataclass(tp):
        return _load(tp, v, at)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _value(option, v, at)
            except BundleError:
                if len(args) - (type(None) in args) == 1:
                    raise
        raise BundleError(f"{at} must be {' or '.join(_name(a) for a in args)}, not {_show(v)}")
    if origin is Literal:
        if v not in args or isinstance(v, bool):
            raise BundleError(f"{at} is {_show(v)}, which is unknown (one of {', '.join(map(str, args))})")
        return v
    if origin is list:
        if not isinstance(v, list) or len(v) > 1 << 16:
            raise BundleError(f"{at} must be a list")
        return [_value(args[0], x, f"{at}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise BundleError(f"{at} must be an object")
        return {k: _value(args[1], x, f"{at}.{k}") for k, x in v.items()}
    ok = {str: lambda: isinstance(v, str),
          int: lambda: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT,
          float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
          bool: lambda: isinstance(v, bool)}[tp]
    if not ok():
        raise BundleError(f"{at} must be {_name(tp)}, not {_show(v)}")
    return float(v) if tp is float else v


def _name(tp) -> str:
    return {str: "a string", int: "a count (an integer >= 0)", float: "a finite number >= 0", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


__all__ = ["CHECKPOINTS", "COMPONENTS", "Calibration", "Checkpoint", "Artifact",
           "Configs", "FORMAT", "GraphFile", "Manifest", "OpenVinoInfo", "TensorSpec",
           "Tokenizer", "TrtInfo", "VERSION"]
