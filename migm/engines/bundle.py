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
bounded size, reads it into the typed tree of engines/manifest.py (which refuses unknown keys,
missing keys, wrong types and out-of-range values), checks its digest, confines every path it
names to the bundle (relative, no `..`, no symlinks, regular files only, sizes as recorded) and
checks every file's hash before anything reads it: all of them at the first open (and at
`migm-export inspect`, or with verify), afterwards only those whose stat changed since
(engines/stamps.py).

A bundle is assembled in a staging directory beside the target and swapped into place
(fileio.atomic_dir), so a failed or killed build leaves no half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath

from ..errors import BundleError
from ..fileio import copy_regular, read_json, recover_dir
from ..fileio import sha256_file as sha256
from . import stamps
from .manifest import FORMAT, Calibration, Manifest

MAX_MANIFEST_BYTES = 1 << 20


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


def fill_bundle(stage: Path, manifest: Manifest, files: dict[str, Path]) -> Manifest:
    """Put `files` (name in bundle -> source path) into the staging directory and write the
    manifest with every file's hash and size and its own digest. Sources inside the stage are
    moved (no copies of multi-GB graphs), others copied. Returns the manifest as written."""
    stage = Path(stage)
    for name, src in files.items():
        dst = stage / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).resolve().is_relative_to(stage.resolve()):
            os.replace(src, dst)
        else:  # a plain file only: a link out of the source folder or a device is refused, not copied
            copy_regular(src, dst, "bundle source file", BundleError)
    for c in manifest.components.values():
        for e in (c, c.onnx):  # the artifact, and a TensorRT engine's source graph
            if e is None:
                continue
            e.sha256, e.bytes = sha256(stage / e.file), (stage / e.file).stat().st_size
            if e.data_file:  # ONNX weights over 2 GB beside the graph, or the IR's .bin
                e.data_sha256, e.data_bytes = sha256(stage / e.data_file), (stage / e.data_file).stat().st_size
    for c in manifest.checkpoints.values():  # a checkpoint is two files: weights, config
        c.sha256 = {ext: sha256(stage / f"{c.file}.{ext}") for ext in ("safetensors", "json")}
    if manifest.tokenizer:
        t = manifest.tokenizer
        t.sha256 = {f: sha256(stage / t.dir / f) for f in t.files}
    manifest.calibration = (Calibration("calibration.npz", sha256(stage / "calibration.npz"))
                            if (stage / "calibration.npz").exists() else None)
    doc = manifest.to_dict()
    doc["digest"] = manifest.digest = manifest_digest(doc)
    (stage / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    """The manifest, read within its size cap and checked against its schema and its digest."""
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
    try:
        manifest = Manifest.from_dict(doc)
    except BundleError as e:
        raise BundleError(f"{mf}: {e}") from None
    if doc["digest"] != manifest_digest(doc):
        raise BundleError(f"{mf} does not match its digest (corrupt or modified; rebuild the bundle)")
    return manifest


def _no_constant(name):
    raise ValueError(f"{name} is not a number a manifest may hold")


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


def verify_bundle(path: str | Path, full: bool = True) -> Manifest:
    """The manifest, after checking that every file it names is in the bundle and matches its hash.

    `full=False` (opening a bundle to run it) skips the hash of a file whose stat is the one the
    last check recorded in the user's cache (engines/stamps.py); the first open, and any file
    that changed, is hashed. A check that passes records the stamp."""
    path = Path(path)
    m = read_manifest(path)
    seen = {} if full else stamps.load(path, m.digest)
    checked: dict[str, tuple[list[int], str]] = {}
    for rel, digest, size, what in m.files():
        file = bundle_file(path, rel, what, size)
        key = stamps.stat_key(file.stat())
        if seen.get(rel) != (key, digest) and sha256(file) != digest:
            raise BundleError(f"bundle {path}: {rel} does not match its hash in manifest.json "
                              "(corrupt or modified; rebuild the bundle)")
        checked[rel] = (key, digest)
    if checked != seen:
        stamps.save(path, m.digest, checked)
    return m
