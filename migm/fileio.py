"""Writing files so that a failure or a kill never leaves a half-written one behind, and never
destroys what migm did not write.

- `atomic_path`: one file, written beside its target and renamed onto it.
- `atomic_dir`: a directory (a bundle, a tokenizer), staged beside its target as
  `.NAME.stage-HOST-PID-*` and swapped in with two renames (the old one to `.NAME.old-HOST-PID`,
  the stage into place), all under the target's lock (`dir_lock`). A directory already at the
  target is replaced only when the caller says it is one of ours. A kill between the two renames
  leaves no directory at the target: the next `atomic_dir` (or `recover_dir`) on that path puts
  the old one back, and removes the staging and old copies that dead processes left.
- `dir_lock`: the target's lock, `.NAME.lock` beside it: an flock (where the platform has one)
  plus the owner recorded in the file (host, PID), because a shared filesystem may not carry
  flocks between hosts. Leftovers are recovered only under the lock, and only those of a process
  on this host that is gone: a live lock, or anything of another host, is left alone (this host
  cannot tell whether that process still runs). HOST is a digest of the host name.
- `swap_files`: several files into a directory that holds other files too (the shipped assets),
  as one: staged first, then renamed along a journal that the next run completes if a kill cut it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: the recorded owner alone
    fcntl = None

# mkstemp creates files 0600; give finished files the usual permissions instead
_UMASK = os.umask(0)
os.umask(_UMASK)
JOURNAL = ".migm-swap.json"
# this host in leftover names and lock files: a digest, since host names may hold any character
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]
LOCK_WAIT = 600.0  # seconds atomic_dir waits for another writer of the same target


def cache_dir() -> Path:
    """The user's migm cache: $MIGM_CACHE, else $XDG_CACHE_HOME/migm, else ~/.cache/migm."""
    if os.environ.get("MIGM_CACHE"):
        return Path(os.environ["MIGM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migm"


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


def _ours_and_dead(entry: Path, marker: str) -> bool:
    """Whether `.NAME.<marker>HOST-PID[-suffix]` was left by a process of this host that is gone.
    Names without this host's tag (another host's, or an older migm's) are never ours to touch."""
    tail = entry.name.split(marker, 1)[1]
    host, _, rest = tail.partition("-")
    pid = rest.split("-", 1)[0]
    return host == HOST and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


class LockBusy(ConfigError):
    """Another process (maybe on another host) holds a directory's lock."""


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _read_owner(fd: int) -> dict | None:
    """The owner a lock file records ({} for an empty one: free), None for one unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return {}
    try:
        owner = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    ok = isinstance(owner, dict) and isinstance(owner.get("host"), str) and isinstance(owner.get("pid"), int)
    return owner if ok else None


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "an unknown owner"
    here = "this host" if owner.get("host") == HOST else f"host {owner.get('name', owner.get('host'))}"
    return f"process {owner.get('pid')} on {here}"


def _try_lock(lock: Path) -> tuple[int | None, dict | None]:
    """(fd, None) with the lock taken and this process recorded as its owner, or (None, the owner
    holding it). A recorded owner that is this host's and gone is taken over; any other recorded
    owner holds the lock even where the flock is free (a shared filesystem may not carry flocks)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                return None, owner or {"host": "?", "pid": "?"}
        try:  # a releaser unlinks the file after its last write: a lock on that old file means nothing
            if os.stat(lock).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None, {}
        except FileNotFoundError:
            os.close(fd)
            return None, {}
        owner = _read_owner(fd)
        # this host's owner without the flock is gone (the flock dies with its process; where there
        # is no flock, the PID says); another host's may live on, and only a person can tell
        stale = owner == {} or (owner is not None and owner["host"] == HOST and owner["pid"] != os.getpid()
                                and (fcntl is not None or not _alive(owner["pid"])))
        if not stale:
            os.close(fd)
            return None, owner
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"host": HOST, "pid": os.getpid(), "name": socket.gethostname()[:100],
                                 "time": round(time.time())}).encode())
        os.fsync(fd)
        return fd, None
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _unlock(lock: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.unlink(lock)  # while still holding it: a waiter that opened this file sees it gone and retries
    os.close(fd)


@contextlib.contextmanager
def dir_lock(path: str | os.PathLike, wait: float = LOCK_WAIT) -> Iterator[Path]:
    """Hold the lock of directory `path` (`.NAME.lock` beside it), waiting up to `wait` seconds for
    another holder; LockBusy naming the holder after that."""
    lock = lock_path(path)
    deadline = time.monotonic() + wait
    while True:
        fd, owner = _try_lock(lock)
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise LockBusy(f"{path} is being written by {_describe(owner)} (lock file {lock}); wait for it to "
                           f"finish, or remove {lock} if that process is gone")
        time.sleep(0.1 if owner == {} else 0.5)
    try:
        yield lock
    finally:
        _unlock(lock, fd)


def _leftovers(path: Path) -> list[Path]:
    return [*path.parent.glob(f".{path.name}.old-*"), *path.parent.glob(f".{path.name}.stage-*")]


def _recover_locked(path: Path) -> None:
    """recover_dir's work, with the lock held."""
    olds = [e for e in path.parent.glob(f".{path.name}.old-*") if _ours_and_dead(e, ".old-")]
    for entry in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
        if not path.exists() and not path.is_symlink():
            os.replace(entry, path)  # the newest old copy wins: it was the last complete one
        else:
            shutil.rmtree(entry, ignore_errors=True)
    for entry in path.parent.glob(f".{path.name}.stage-*"):
        if _ours_and_dead(entry, ".stage-"):
            shutil.rmtree(entry, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> None:
    """Put back a directory whose swap was cut between its two renames, and remove the staging
    and old copies that dead processes of this host left beside `path`, under its lock. Where
    another process holds the lock (a live writer, or one of another host) nothing is touched."""
    path = Path(path)
    if not path.parent.is_dir() or not _leftovers(path):
        return  # nothing to recover: no lock taken, nothing written (readers open bundles this way)
    try:
        with dir_lock(path, wait=0):
            _recover_locked(path)
    except LockBusy:
        return


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, ours: Callable[[Path], bool] = lambda p: False,
               what: str = "directory", wait: float = LOCK_WAIT) -> Iterator[Path]:
    """Yield a staging directory beside `path`; it replaces `path` only on success.

    `path` may be absent, an empty directory, or a directory `ours(path)` accepts (one this tool
    wrote); anything else is refused with a ConfigError before any work. The target's lock is
    held from the check to the swap (waiting up to `wait` seconds for another writer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with dir_lock(path, wait=wait):
        _recover_locked(path)
        _check_target(path, ours, what)
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.stage-{HOST}-{os.getpid()}-", dir=path.parent))
        try:
            yield stage
            os.chmod(stage, 0o777 & ~_UMASK)
            old = path.with_name(f".{path.name}.old-{HOST}-{os.getpid()}") if path.exists() else None
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
    _check_target(Path(path), ours, what)


def _check_target(path: Path, ours: Callable[[Path], bool], what: str) -> None:
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


# ---- reading files that others made ----

MAX_JSON_BYTES = 1 << 20  # a manifest, config, index or job file: far more than any real one holds
MAX_JSON_DEPTH = 64  # nesting: real files have a handful of levels; 100,000 would exhaust the parser's stack
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def open_regular(path: str | os.PathLike, max_bytes: int, what: str = "file", error=ConfigError):
    """An open binary file object of a regular file of at most `max_bytes`, or `error` saying why not.

    Opened without following a final symbolic link and without blocking (a FIFO would hang a
    plain open), then checked on the open descriptor (not the name, which may change meanwhile):
    a regular file, not a directory, device or FIFO, not over the cap."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as e:  # ELOOP: the name is a symbolic link
        if path.is_symlink():
            raise error(f"{what} {path} is a symbolic link; migm reads plain files only") from None
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file (a directory, device or FIFO)")
        raise error(f"{what} {path} has {st.st_size} bytes; at most {max_bytes} are read")
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, max_bytes: int, what: str = "file", error=ConfigError) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (`open_regular`), read up to the cap plus
    one byte, so a file that grows while read is still refused, not read whole."""
    with open_regular(path, max_bytes, what, error) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what} {path} has over {max_bytes} bytes; at most {max_bytes} are read")
    return data


def json_depth(data: bytes) -> int:
    """How deeply a JSON text nests its lists and objects (brackets inside strings not counted)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', data)):
        depth += 1 if m[0] in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(data: bytes | str, what: str = "JSON", error=ConfigError, max_depth: int = MAX_JSON_DEPTH,
               parse_constant=None):
    """JSON text, parsed only after its nesting is checked (NaN/Infinity refused unless
    `parse_constant` says otherwise)."""
    raw = data.encode() if isinstance(data, str) else data
    if json_depth(raw) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels: not a file migm wrote or reads")

    def no_constant(name):
        raise ValueError(f"{name} is not a number {what} may hold")

    try:
        return json.loads(raw, parse_constant=parse_constant or no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{what} is not valid JSON: {clip(str(e))}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", error=ConfigError, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH, parse_constant=None):
    """One bounded reader for every JSON file from others: a regular file (no link, device or FIFO),
    at most `max_bytes`, nesting at most `max_depth`, then parsed. Every failure is `error`."""
    data = read_regular(path, max_bytes, what, error)
    return parse_json(data, f"{what} {path}", error, max_depth, parse_constant)


def read_json_lines(path: str | os.PathLike, what: str = "JSON-lines file", error=ConfigError,
                    max_bytes: int = MAX_JSON_BYTES * 16) -> list:
    """A JSON-lines file, bounded as `read_json`; each line is one value."""
    data = read_regular(path, max_bytes, what, error)
    return [parse_json(line, f"{what} {path} line {n}", error) for n, line in enumerate(data.splitlines(), 1)
            if line.strip()]


def copy_regular(src: str | os.PathLike, dst: str | os.PathLike, what: str = "file", error=ConfigError,
                 max_bytes: int = 1 << 40) -> None:
    """Copy a regular file only (no symbolic link followed, no device or FIFO read), at most `max_bytes`."""
    with open_regular(src, max_bytes, what, error) as fh, open(dst, "wb") as out:
        copied = 0
        for block in iter(lambda: fh.read(1 << 20), b""):
            copied += len(block)
            if copied > max_bytes:  # grew while copied
                raise error(f"{what} {src} grew past {max_bytes} bytes while it was copied")
            out.write(block)


def clip(text, limit: int = 200) -> str:
    """At most `limit` characters of user input for an error line or a log (a 1 MiB class name
    echoed whole would bury the message)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
