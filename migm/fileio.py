"""Writing files so that a failure or a kill never leaves a half-written one behind, and never
destroys what migm did not write.

- `atomic_path`: one file, written beside its target and renamed onto it.
- `atomic_dir`: a directory (a bundle, a tokenizer), staged beside its target as
  `.NAME.stage-PID-*` and swapped in with two renames (the old one to `.NAME.old-PID`, the stage
  into place). A directory already at the target is replaced only when the caller says it is one
  of ours. A kill between the two renames leaves no directory at the target: the next
  `atomic_dir` (or `recover_dir`) on that path puts the old one back, and removes the staging
  and old copies that dead processes left.
- `swap_files`: several files into a directory that holds other files too (the shipped assets),
  as one: staged first, then renamed along a journal that the next run completes if a kill cut it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError

# mkstemp creates files 0600; give finished files the usual permissions instead
_UMASK = os.umask(0)
os.umask(_UMASK)
JOURNAL = ".migm-swap.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    The temporary file lives in the same directory so the final `os.replace` is an
    atomic rename on the same filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(entry: Path, marker: str) -> int | None:
    """The PID in `.NAME.<marker>PID[-suffix]`, or None if the name has none."""
    tail = entry.name.split(marker, 1)[1].split("-", 1)[0]
    return int(tail) if tail.isdigit() else None


def recover_dir(path: str | os.PathLike) -> None:
    """Put back a directory whose swap was cut between its two renames, and remove the staging
    and old copies that dead processes left beside `path` (live processes' are theirs)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for entry in olds:
        pid = _owner(entry, ".old-")
        if pid is None or _alive(pid):
            continue
        if not path.exists() and not path.is_symlink():
            os.replace(entry, path)  # the newest old copy wins: it was the last complete one
        else:
            shutil.rmtree(entry, ignore_errors=True)
    for entry in path.parent.glob(f".{path.name}.stage-*"):
        pid = _owner(entry, ".stage-")
        if pid is not None and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, ours: Callable[[Path], bool] = lambda p: False,
               what: str = "directory") -> Iterator[Path]:
    """Yield a staging directory beside `path`; it replaces `path` only on success.

    `path` may be absent, an empty directory, or a directory `ours(path)` accepts (one this tool
    wrote); anything else is refused with a ConfigError before any work."""
    path = Path(path)
    check_replaceable(path, ours, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.stage-{os.getpid()}-", dir=path.parent))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_UMASK)
        old = path.with_name(f".{path.name}.old-{os.getpid()}") if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(stage, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def check_replaceable(path: Path, ours: Callable[[Path], bool] = lambda p: False, what: str = "directory") -> None:
    """Refuse a target that holds something migm did not write (after recovering an interrupted swap)."""
    recover_dir(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError(f"{path} exists and is not a {what} migm wrote; choose another output path "
                          "(migm replaces only what it made)")
    if path.is_dir() and any(path.iterdir()) and not ours(path):
        raise ConfigError(f"{path} is a directory with files migm did not write; choose another output path "
                          "or empty it (migm replaces only what it made)")


def check_writable(directory: str | os.PathLike) -> None:
    """Fail now, not after the work, if `directory` (created if missing) cannot take files."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".migm-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to {d}: {e.strerror or e}") from None


@contextlib.contextmanager
def staged_files(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory inside `dest`; on success every file (or directory) written there
    replaces its namesake in `dest`, as one: a journal lists the moves before the first, so a kill
    part-way is completed by the next `staged_files` or `recover_files` on `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    recover_files(dest)
    stage = Path(tempfile.mkdtemp(prefix=f".migm-stage-{os.getpid()}-", dir=dest))
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        with atomic_path(dest / JOURNAL) as tmp:
            tmp.write_text(json.dumps({"stage": stage.name, "names": names}))
        recover_files(dest)
    finally:
        if stage.exists() and not (dest / JOURNAL).exists():
            shutil.rmtree(stage, ignore_errors=True)


def recover_files(dest: str | os.PathLike) -> None:
    """Complete the moves of a journal a kill cut short (moves already done are skipped), and
    remove staging directories that dead processes left in `dest`."""
    dest = Path(dest)
    journal = dest / JOURNAL
    if journal.is_file():
        doc = json.loads(journal.read_text())
        stage = dest / doc["stage"]
        for name in doc["names"]:
            src, dst = stage / name, dest / name
            if not src.exists():
                continue  # moved before the kill
            if src.is_dir() and dst.is_dir():
                shutil.rmtree(dst)  # the previous copy, which this journal replaces
            os.replace(src, dst)
        journal.unlink()
        shutil.rmtree(stage, ignore_errors=True)
    for entry in dest.glob(".migm-stage-*"):
        pid = _owner(entry, ".migm-stage-")
        if pid is not None and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
