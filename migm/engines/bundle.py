"""The `NAME.plan/` bundle: a directory with `manifest.json` and one artifact per component.

    NAME.plan/
      manifest.json      format, family and config, token grid, vocab, sampling defaults,
                         components (file, precision, backend, inputs/outputs with shapes,
                         sha256), tool versions; for TensorRT the flavour, its version and
                         the compute capabilities the engines target (`trt`)
      base.onnx | base.engine
      shortcut.onnx | shortcut.engine
      decoder.onnx | decoder.engine
      onnx/              (TensorRT bundles) the graphs the engines were built from, for rebuilds
      calibration.npz    (INT8 builds) the shortcut's calibration inputs, reused on rebuild
      torch/             the source checkpoints (base, vq, shortcut: .safetensors + .json),
                         run by the torch backend; the others take the base head from them
      tokenizer/         (text-to-image models) the prompt tokenizer, save_pretrained layout

A bundle is assembled in a temporary directory beside the target and renamed into
place, so a failed build leaves no half-written bundle. Loading checks every file's hash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import BundleError
from ..fileio import atomic_dir
from ..fileio import sha256_file as sha256

FORMAT = "migm-bundle"
VERSION = 1


def write_bundle(out: str | Path, manifest: dict, files: dict[str, Path]) -> Path:
    """Create `out` from `files` (name in bundle -> source path) and `manifest`, atomically.

    Component entries in `manifest["components"]` get their `sha256` and `bytes` filled in.
    An existing bundle at `out` is replaced only once the new one is complete.
    """
    out = Path(out)
    with atomic_dir(out) as stage:
        for name, src in files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, stage / name)
        for entry in manifest.get("components", {}).values():
            for e in (entry, entry.get("onnx")):  # the artifact, and a TensorRT engine's source graph
                if e is None:
                    continue
                p = stage / e["file"]
                e["sha256"], e["bytes"] = sha256(p), p.stat().st_size
                if e.get("data_file"):  # ONNX weights over 2 GB, beside the graph
                    d = stage / e["data_file"]
                    e["data_sha256"], e["bytes"] = sha256(d), e["bytes"] + d.stat().st_size
        for entry in manifest.get("checkpoints", {}).values():  # a checkpoint is two files: weights, config
            entry["sha256"] = {ext: sha256(stage / f"{entry['file']}.{ext}") for ext in ("safetensors", "json")}
        if manifest.get("tokenizer"):
            t = manifest["tokenizer"]
            t["sha256"] = {f: sha256(stage / t["dir"] / f) for f in t["files"]}
        if (stage / "calibration.npz").exists():
            manifest["calibration"] = {"file": "calibration.npz", "sha256": sha256(stage / "calibration.npz")}
        (stage / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, **manifest},
                                                        indent=2) + "\n")
    return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory (expected NAME.plan/ from `migm-export build`)")
    mf = path / "manifest.json"
    if not mf.exists():
        raise BundleError(f"{path} has no manifest.json: not a bundle, or an unfinished one")
    try:
        doc = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf} is not valid JSON: {e}") from e
    if doc.get("format") != FORMAT:
        raise BundleError(f"{mf} is not a migm bundle manifest")
    if doc.get("version") != VERSION:
        raise BundleError(f"{path} is bundle version {doc.get('version')}; this migm reads version {VERSION}")
    return doc


def verify_bundle(path: str | Path) -> dict:
    """The manifest, after checking that every file it lists exists and matches its hash."""
    path = Path(path)
    doc = read_manifest(path)

    def check(rel: str, digest: str, what: str) -> None:
        if not (path / rel).exists():
            raise BundleError(f"bundle {path}: {what} {rel} is missing")
        if sha256(path / rel) != digest:
            raise BundleError(f"bundle {path}: {rel} does not match its hash in manifest.json "
                              "(corrupt or modified; rebuild the bundle)")

    for name, entry in doc.get("components", {}).items():
        for e in (entry, entry.get("onnx")):
            if e is None:
                continue
            check(e["file"], e["sha256"], f"component {name} file")
            if e.get("data_file"):
                check(e["data_file"], e["data_sha256"], f"component {name} weights")
    for entry in doc.get("checkpoints", {}).values():
        for ext, digest in entry["sha256"].items():
            check(f"{entry['file']}.{ext}", digest, "checkpoint file")
    tok = doc.get("tokenizer")
    for name, digest in (tok or {}).get("sha256", {}).items():
        check(f"{tok['dir']}/{name}", digest, "tokenizer file")
    return doc
