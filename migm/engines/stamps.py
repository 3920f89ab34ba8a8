"""Verification stamps: what a bundle's files looked like when they last matched their hashes, so
that the next open re-hashes only the files that changed (a multi-GB bundle opens in
milliseconds instead of re-reading every byte in every process).

A stamp lives in the user's cache (`fileio.cache_dir()/stamps/`), never in the bundle (which may
be read-only, shared, or someone else's). It is keyed by the bundle's absolute path and its
manifest digest, and records per file its sha256 as checked and its stat: size, mtime_ns,
ctime_ns, inode, device. Any write to a file changes its ctime (even where the mtime is set
back with os.utime), and a replaced file has another inode, so a file whose five numbers are the
same as when it was hashed still holds what was hashed.
Anything unexpected in a stamp file (corrupt, another bundle's, another format) is ignored: the
open hashes everything, as the first one does, and writes a fresh stamp (atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..fileio import atomic_path, cache_dir

FORMAT = "migm-stamp"
VERSION = 1
MAX_STAMP_BYTES = 1 << 20


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def stamp_path(bundle: Path, digest: str) -> Path:
    key = hashlib.sha256(f"{Path(bundle).resolve()}\0{digest}".encode()).hexdigest()[:32]
    return cache_dir() / "stamps" / f"{key}.json"


def load(bundle: Path, digest: str) -> dict[str, tuple[list[int], str]]:
    """rel path -> (stat key, sha256) of the files the last full check saw; {} where there is no
    usable stamp for this bundle and manifest."""
    path = stamp_path(bundle, digest)
    try:
        if path.is_symlink() or path.stat().st_size > MAX_STAMP_BYTES:
            return {}
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION
            and doc.get("bundle") == str(Path(bundle).resolve()) and doc.get("manifest_digest") == digest
            and isinstance(doc.get("files"), dict)):
        return {}
    out = {}
    for rel, entry in doc["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("stat"), list) and len(entry["stat"]) == 5
                and all(isinstance(v, int) and not isinstance(v, bool) for v in entry["stat"])
                and isinstance(entry.get("sha256"), str)):
            return {}
        out[rel] = (entry["stat"], entry["sha256"])
    return out


def save(bundle: Path, digest: str, files: dict[str, tuple[list[int], str]]) -> None:
    """Write the stamp (atomically); a cache that cannot be written only costs the next open a full check."""
    doc = {"format": FORMAT, "version": VERSION, "bundle": str(Path(bundle).resolve()), "manifest_digest": digest,
           "files": {rel: {"stat": key, "sha256": sha} for rel, (key, sha) in sorted(files.items())}}
    try:
        with atomic_path(stamp_path(bundle, digest)) as tmp:
            tmp.write_text(json.dumps(doc))
    except OSError:
        pass
