"""The `NAME.plan/` bundle: a directory with `manifest.json` and one artifact per component.

    NAME.plan/
      manifest.json      format, family and config, the model spec, sampling defaults,
                         components (file, precision, backend, inputs/outputs with shapes,
                         sha256), tool versions; for TensorRT the flavour, its version and
                         the compute capabilities the engines target (`trt`); a digest of all of it
      base.onnx | base.engine | base.xml + base.bin (OpenVINO IR)
      shortcut.onnx | shortcut.engine
      decoder.onnx | decoder.engine
      onnx/              (TensorRT bundles) the graphs the engines were built from, for rebuilds
      calibration.npz    (INT8 builds) the shortcut's calibration inputs, reused on rebuild
      torch/             the source checkpoints (base, vq, shortcut: .safetensors + .json),
                         run by the torch backend; the others take the base head from them
      tokenizer/         (text-to-image models) the prompt tokenizer, save_pretrained layout

A bundle is data, never code, and may come from someone else. Loading it reads a manifest of
bounded size, checks it against one schema (types, ranges, finite numbers, no unknown keys) and
its digest, confines every path it names to the bundle (relative, no `..`, no symlinks, regular
files only, sizes as recorded) and checks every file's hash before anything reads it: all of them
at the first open (and at `migm-export inspect`, or with verify), afterwards only those whose
stat changed since (engines/stamps.py).

A bundle is assembled in a staging directory beside the target and swapped into place
(fileio.atomic_dir), so a failed or killed build leaves no half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path, PurePosixPath

from ..errors import BundleError, ConfigError, MigmError
from ..families import FAMILIES, family
from ..fileio import copy_regular, read_json, recover_dir
from ..fileio import sha256_file as sha256
from ..sampling.config import SamplerConfig
from . import stamps
from .graph_io import check_manifest_io

FORMAT = "migm-bundle"
VERSION = 2  # 2: the manifest's schema, spec and digest
MAX_MANIFEST_BYTES = 1 << 20
MAX_NAME = 200  # class names become file names (slugged and cut), but a page-long one is no class name
COMPONENTS = ("base", "shortcut", "decoder")
CHECKPOINTS = ("base", "vq", "shortcut")
DTYPES = ("float32", "float16", "int64", "int32", "bool")


def is_bundle(path: Path) -> bool:
    """Whether `path` holds a manifest of a bundle migm wrote (the only directory a build replaces)."""
    try:
        mf = path / "manifest.json"
        if mf.is_symlink() or not mf.is_file() or mf.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        return read_json(mf, "bundle manifest", BundleError, MAX_MANIFEST_BYTES).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, BundleError):
        return False


def manifest_digest(doc: dict) -> str:
    """sha256 of the manifest's canonical JSON, without its own digest field."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fill_bundle(stage: Path, manifest: dict, files: dict[str, Path]) -> None:
    """Put `files` (name in bundle -> source path) into the staging directory and write the
    manifest with every file's hash and size and its own digest. Sources inside the stage are
    moved (no copies of multi-GB graphs), others copied."""
    stage = Path(stage)
    for name, src in files.items():
        dst = stage / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).resolve().is_relative_to(stage.resolve()):
            os.replace(src, dst)
        else:  # a plain file only: a link out of the source folder or a device is refused, not copied
            copy_regular(src, dst, "bundle source file", BundleError)
    for entry in manifest.get("components", {}).values():
        for e in (entry, entry.get("onnx")):  # the artifact, and a TensorRT engine's source graph
            if e is None:
                continue
            p = stage / e["file"]
            e["sha256"], e["bytes"] = sha256(p), p.stat().st_size
            if e.get("data_file"):  # ONNX weights over 2 GB, beside the graph
                d = stage / e["data_file"]
                e["data_sha256"], e["data_bytes"] = sha256(d), d.stat().st_size
    for entry in manifest.get("checkpoints", {}).values():  # a checkpoint is two files: weights, config
        entry["sha256"] = {ext: sha256(stage / f"{entry['file']}.{ext}") for ext in ("safetensors", "json")}
    if manifest.get("tokenizer"):
        t = manifest["tokenizer"]
        t["sha256"] = {f: sha256(stage / t["dir"] / f) for f in t["files"]}
    if (stage / "calibration.npz").exists():
        manifest["calibration"] = {"file": "calibration.npz", "sha256": sha256(stage / "calibration.npz")}
    doc = {"format": FORMAT, "version": VERSION, **manifest}
    doc["digest"] = manifest_digest(doc)
    (stage / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")


def read_manifest(path: str | Path) -> dict:
    """The manifest, read within its size cap and checked against the schema and its digest."""
    path = Path(path)
    try:
        recover_dir(path)  # a build killed between its two renames: the previous bundle comes back
    except OSError:
        pass  # a read-only place: nothing to recover there
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory (expected NAME.plan/ from `migm-export build`)")
    mf = path / "manifest.json"
    if not mf.exists() and not mf.is_symlink():
        raise BundleError(f"{path} has no manifest.json: not a bundle, or an unfinished one")
    st = mf.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{mf} is not a regular file (a link or a device); a bundle holds plain files only")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mf} has {st.st_size} bytes; a bundle manifest has at most {MAX_MANIFEST_BYTES}")
    # the one bounded reader: opened without following links, checked on the descriptor, nesting capped
    doc = read_json(mf, "bundle manifest", BundleError, MAX_MANIFEST_BYTES, parse_constant=_no_constant)
    _check_schema(doc, mf)
    if doc["digest"] != manifest_digest(doc):
        raise BundleError(f"{mf} does not match its digest (corrupt or modified; rebuild the bundle)")
    return doc


def bundle_file(bundle: Path, rel, what: str, size: int | None = None) -> Path:
    """The file a manifest names, confined to the bundle: a relative path without `..`, no
    symlink on the way, a regular file (not a FIFO or device), of the recorded size."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) and rel else ()
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise BundleError(f"bundle {bundle}: {what} path {rel!r} leaves the bundle; a bundle names its own files only")
    full = bundle
    for part in parts:
        full = full / part
        if full.is_symlink():
            raise BundleError(f"bundle {bundle}: {what} {rel} is a symbolic link; a bundle holds plain files only")
    if not full.exists():
        raise BundleError(f"bundle {bundle}: {what} {rel} is missing")
    st = full.stat()
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"bundle {bundle}: {what} {rel} is not a regular file")
    if size is not None and st.st_size != size:
        raise BundleError(f"bundle {bundle}: {what} {rel} has {st.st_size} bytes, the manifest says {size} "
                          "(corrupt or modified; rebuild the bundle)")
    return full


def verify_bundle(path: str | Path, full: bool = True) -> dict:
    """The manifest, after checking that every file it names is in the bundle and matches its hash.

    `full=False` (opening a bundle to run it) skips the hash of a file whose stat is the one the
    last check recorded in the user's cache (engines/stamps.py); the first open, and any file
    that changed, is hashed. A check that passes records the stamp."""
    path = Path(path)
    doc = read_manifest(path)
    seen = {} if full else stamps.load(path, doc["digest"])
    checked: dict[str, tuple[list[int], str]] = {}

    def check(rel: str, digest: str, what: str, size: int | None = None) -> None:
        file = bundle_file(path, rel, what, size)
        key = stamps.stat_key(file.stat())
        if seen.get(rel) == (key, digest):
            checked[rel] = (key, digest)
            return
        if sha256(file) != digest:
            raise BundleError(f"bundle {path}: {rel} does not match its hash in manifest.json "
                              "(corrupt or modified; rebuild the bundle)")
        checked[rel] = (key, digest)

    for name, entry in doc["components"].items():
        for e in (entry, entry.get("onnx")):  # the artifact, and a TensorRT engine's source graph
            if e is None:
                continue
            check(e["file"], e["sha256"], f"component {name} file", e["bytes"])
            if e.get("data_file"):
                check(e["data_file"], e["data_sha256"], f"component {name} weights", e.get("data_bytes"))
    for entry in doc["checkpoints"].values():
        for ext, digest in entry["sha256"].items():
            check(f"{entry['file']}.{ext}", digest, "checkpoint file")
    tok = doc.get("tokenizer")
    if tok:
        for name in tok["files"]:
            check(f"{tok['dir']}/{name}", tok["sha256"][name], "tokenizer file")
    if doc.get("calibration"):
        check(doc["calibration"]["file"], doc["calibration"]["sha256"], "calibration data")
    if checked != seen:
        stamps.save(path, doc["digest"], checked)
    return doc


# ---- the schema ----

def _no_constant(name):
    raise ValueError(f"{name} is not a number a manifest may hold")


def _check_schema(doc, mf: Path) -> None:
    """Types, ranges and keys of every field; a BundleError naming the first wrong one."""
    try:
        _expect(isinstance(doc, dict), "the manifest is not a JSON object")
        _expect(doc.get("format") == FORMAT, "it is not a migm bundle manifest (format)")
        _expect(doc.get("version") == VERSION,
                f"it is bundle version {doc.get('version')}; this migm reads version {VERSION} (rebuild it)")
        _keys(doc, "manifest", required={"format", "version", "family", "precision", "backend", "config", "spec",
                                         "class_names", "sampling", "sources", "components", "checkpoints", "tools",
                                         "digest"}, optional={"tokenizer", "calibration", "trt", "openvino"})
        _expect(doc["family"] in FAMILIES, f"family {doc['family']!r} is none this migm runs ({', '.join(FAMILIES)})")
        fam = family(doc["family"])
        _expect(doc["precision"] in ("fp32", "fp16", "int8", "bf16", "best"),
                f"precision {doc['precision']!r} is unknown")
        _expect(doc["backend"] in ("ort", "trt", "openvino"), f"backend {doc['backend']!r} is unknown")
        cfg = doc["config"]
        _keys(cfg, "config", required={"base", "vq", "shortcut"})
        _expect(isinstance(cfg["base"], dict) and isinstance(cfg["vq"], dict), "config.base and config.vq are objects")
        try:
            spec = fam.spec_from_config(cfg["base"]).validate()
        except (TypeError, ValueError) as e:
            raise BundleError(f"config.base does not describe a {fam.name} model: {e}") from None
        _expect(doc["spec"] == spec.to_dict(), "spec does not match config.base")
        names = doc["class_names"]
        _expect(isinstance(names, list) and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names),
                f"class_names must be a list of names of 1..{MAX_NAME} characters")
        _expect(len(names) in (0, spec.num_classes),
                f"class_names has {len(names)} names for {spec.num_classes} classes")
        try:
            SamplerConfig.from_dict(doc["sampling"]).validate(spec.num_tokens)
        except (ConfigError, TypeError, AttributeError) as e:
            raise BundleError(f"sampling: {e}") from None
        _expect(_str_map(doc["sources"]) and _str_map(doc["tools"]), "sources and tools map names to strings")
        _expect(isinstance(doc["components"], dict) and set(doc["components"]) <= set(COMPONENTS)
                and {"base", "decoder"} <= set(doc["components"]), f"components must be {', '.join(COMPONENTS)}")
        for name, entry in doc["components"].items():
            _component(entry, f"components.{name}")
        _expect(isinstance(doc["checkpoints"], dict) and set(doc["checkpoints"]) <= set(CHECKPOINTS),
                f"checkpoints must be some of {', '.join(CHECKPOINTS)}")
        for name, entry in doc["checkpoints"].items():
            _keys(entry, f"checkpoints.{name}", required={"file", "sha256"})
            _expect(isinstance(entry["file"], str) and isinstance(entry["sha256"], dict)
                    and set(entry["sha256"]) == {"safetensors", "json"} and all(map(_hex, entry["sha256"].values())),
                    f"checkpoints.{name} needs a file and the sha256 of its .safetensors and .json")
        if "tokenizer" in doc:
            t = doc["tokenizer"]
            _keys(t, "tokenizer", required={"dir", "files", "sha256"})
            _expect(isinstance(t["dir"], str) and isinstance(t["files"], list) and t["files"]
                    and all(isinstance(f, str) and "/" not in f for f in t["files"])
                    and isinstance(t["sha256"], dict) and set(t["sha256"]) == set(t["files"])
                    and all(map(_hex, t["sha256"].values())), "tokenizer lists its files and their sha256")
        if "calibration" in doc:
            _keys(doc["calibration"], "calibration", required={"file", "sha256"})
            _expect(_hex(doc["calibration"]["sha256"]), "calibration.sha256 is a sha256")
        if "trt" in doc:
            t = doc["trt"]
            _keys(t, "trt", required={"flavour", "version", "compute_capabilities", "hardware_compat", "opt_level"})
            _expect(t["flavour"] in ("tensorrt", "tensorrt-rtx") and isinstance(t["version"], str)
                    and isinstance(t["compute_capabilities"], list)
                    and all(isinstance(c, str) and len(c) <= 16 for c in t["compute_capabilities"])
                    and (t["hardware_compat"] is None or isinstance(t["hardware_compat"], str))
                    and isinstance(t["opt_level"], int) and 0 <= t["opt_level"] <= 5,
                    "trt names a flavour (tensorrt, tensorrt-rtx), its version, target compute capabilities, "
                    "hardware compatibility and optimization level")
        if "openvino" in doc:
            o = doc["openvino"]
            _keys(o, "openvino", required={"version", "inference_precision", "cpu"})
            _expect(isinstance(o["version"], str) and len(o["version"]) <= 64 and o["inference_precision"] in
                    ("bf16", "f32") and isinstance(o["cpu"], str) and len(o["cpu"]) <= 200,
                    "openvino names its version, the inference precision chosen at the build (bf16, f32) and the CPU")
        _expect(_hex(doc["digest"]), "digest is a sha256")
        check_manifest_io(doc)  # the recorded graph shapes against config.base's sizes
    except BundleError as e:
        raise BundleError(f"{mf}: {e}") from None
    except MigmError as e:
        raise BundleError(f"{mf}: {e}") from None


def _component(entry, where: str) -> None:
    _keys(entry, where, required={"file", "sha256", "bytes", "precision", "backend", "inputs", "outputs",
                                  "rel_error_vs_torch"},
          optional={"data_file", "data_sha256", "data_bytes", "profile", "onnx", "build_seconds", "measured_ms"})
    _expect(isinstance(entry["file"], str) and _hex(entry["sha256"]), f"{where} needs a file and its sha256")
    _expect(_count(entry["bytes"]), f"{where}.bytes is a size in bytes")
    _expect(entry["precision"] in ("fp32", "fp16", "int8", "bf16"), f"{where}.precision is unknown")
    err = entry["rel_error_vs_torch"]
    _expect(isinstance(err, (int, float)) and not isinstance(err, bool) and math.isfinite(err) and err >= 0,
            f"{where}.rel_error_vs_torch is a finite number")
    for io in ("inputs", "outputs"):
        specs = entry[io]
        _expect(isinstance(specs, list) and 0 < len(specs) <= 16, f"{where}.{io} is a list of tensors")
        for t in specs:
            _keys(t, f"{where}.{io}[]", required={"name", "dtype", "shape"})
            _expect(isinstance(t["name"], str) and t["dtype"] in DTYPES and isinstance(t["shape"], list)
                    and len(t["shape"]) <= 8 and all(isinstance(d, str) or _count(d) for d in t["shape"]),
                    f"{where}.{io}: {t.get('name')!r} has a bad name, dtype or shape")
    if "data_file" in entry:
        _expect(isinstance(entry["data_file"], str) and _hex(entry.get("data_sha256")),
                f"{where}.data_file needs its sha256")
    if "onnx" in entry:  # a TensorRT engine's source graph
        g = entry["onnx"]
        _keys(g, f"{where}.onnx", required={"file", "sha256", "bytes"},
              optional={"data_file", "data_sha256", "data_bytes"})
        _expect(isinstance(g["file"], str) and _hex(g["sha256"]) and _count(g["bytes"]),
                f"{where}.onnx needs a file, its sha256 and size")
        if "data_file" in g:
            _expect(isinstance(g["data_file"], str) and _hex(g.get("data_sha256")),
                    f"{where}.onnx.data_file needs its sha256")
    if "measured_ms" in entry:  # --precision best: each candidate precision's ms per call, by rows
        m = entry["measured_ms"]
        _expect(isinstance(m, dict) and 0 < len(m) <= 8 and all(
            isinstance(p, str) and len(p) <= 16 and isinstance(t, dict) and 0 < len(t) <= 16 and all(
                isinstance(r, str) and r.isdigit() and len(r) <= 8 and _number(v) for r, v in t.items())
            for p, t in m.items()), f"{where}.measured_ms maps precisions to milliseconds by rows")
    if "build_seconds" in entry:
        b = entry["build_seconds"]
        _expect(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b >= 0,
                f"{where}.build_seconds is a finite number")


def _keys(d, where: str, required: set, optional: set = frozenset()) -> None:
    _expect(isinstance(d, dict), f"{where} is not an object")
    missing, unknown = required - set(d), set(d) - required - set(optional)
    _expect(not missing, f"{where} lacks {', '.join(sorted(missing))}")
    _expect(not unknown, f"{where} has unknown keys {', '.join(sorted(map(str, unknown)))}")


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise BundleError(message)


def _hex(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 50


def _str_map(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
