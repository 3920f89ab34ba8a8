"""The docs run: every ```python and ```bash block of README.md and docs/*.md is executed, in
order per file (so a quick start works pasted in order), each file in a temporary folder of
its own, with this checkout's console scripts on PATH and MIGM_CACHE in a temporary folder.

Bash blocks run line by line (a line ending in a backslash continues), each through `bash -c`.
Python blocks run in one Python process per file, in a shared namespace, as pasted into one
interpreter. A block preceded by `<!-- skip: REASON -->` (a GPU, a download, a server, hours)
is reported as skipped with that reason.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "bash")
SKIP = re.compile(r"^<!--\s*skip:\s*(.+?)\s*-->\s*$")
TIMEOUT = 600  # seconds for one bash line or one Python block

# executes the blocks it reads (one JSON object a line) in one namespace; answers on the real stdout
WORKER = r"""
import json, sys, traceback
reply, sys.stdout = sys.stdout, sys.stderr   # what the blocks print goes to stderr
ns = {"__name__": "__main__"}
for line in sys.stdin:
    block = json.loads(line)
    try:
        exec(compile(block["code"], block["name"], "exec"), ns)
        out = {"ok": True}
    except BaseException:
        out = {"ok": False, "error": traceback.format_exc(limit=-8)}
    reply.write(json.dumps(out) + "\n")
    reply.flush()
"""


@dataclass
class Block:
    doc: str  # path relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}-{self.lang}"


def doc_blocks(path: Path) -> list[Block]:
    """The python and bash blocks of a Markdown file, each with the skip reason marked before it."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.match(prev.strip())
        if m.group(1) in RUN:
            out.append(Block(str(path.relative_to(ROOT)), i + 1, m.group(1), "\n".join(lines[i + 1:end]),
                             skip.group(1) if skip else None))
        i = end + 1
    return out


BLOCKS = [b for path in DOCS for b in doc_blocks(path)]


def shell_lines(code: str) -> list[str]:
    """Logical lines of a bash block: continuations joined, blank and comment-only lines dropped."""
    out, cur = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


class DocRun:
    """One file's folder, environment, Python process, and whether an earlier block failed."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env, self.worker, self.failed = folder, env, None, None

    def bash(self, block: Block) -> None:
        for line in shell_lines(block.code):
            proc = subprocess.run(["bash", "-c", line], cwd=self.folder, env=self.env, capture_output=True,
                                  text=True, timeout=TIMEOUT)
            if proc.returncode != 0:
                raise AssertionError(f"{block.id}: `{line}` exited {proc.returncode}:\n"
                                     f"{(proc.stdout + proc.stderr)[-3000:]}")

    def python(self, block: Block) -> None:
        if self.worker is None:
            self.worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.folder, env=self.env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                           text=True)
        self.worker.stdin.write(json.dumps({"code": block.code, "name": block.id}) + "\n")
        self.worker.stdin.flush()
        ready, _, _ = select.select([self.worker.stdout], [], [], TIMEOUT)
        if not ready:
            self.close()
            raise AssertionError(f"{block.id}: no answer in {TIMEOUT} s")
        answer = self.worker.stdout.readline()
        if not answer:
            raise AssertionError(f"{block.id}: the Python process died (exit {self.worker.wait()})")
        result = json.loads(answer)
        if not result["ok"]:
            raise AssertionError(f"{block.id} raised:\n{result['error']}")

    def close(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker.wait()
            self.worker = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("migm-cache")  # shared: the default bundle is built once
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MIGM_CACHE": str(cache),
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg-cache")),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    made = {}

    def get(doc: str) -> DocRun:
        if doc not in made:
            made[doc] = DocRun(tmp_path_factory.mktemp(Path(doc).stem), env)
        return made[doc]

    yield get
    for run in made.values():
        run.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block(block, runs):
    if block.skip:
        pytest.skip(block.skip)
    run = runs(block.doc)
    if run.failed:
        pytest.skip(f"an earlier block of {block.doc} failed ({run.failed})")
    try:
        getattr(run, block.lang)(block)
    except BaseException:
        run.failed = block.id
        raise


def test_skip_markers_are_read():
    """The parser itself: a marker applies to the next block only, and other fences are not run."""
    blocks = {b.id: b for b in BLOCKS}
    readme = [b for b in BLOCKS if b.doc == "README.md"]
    assert readme and readme[0].skip and "test suite" in readme[0].skip
    assert any(b.skip is None and b.lang == "python" for b in readme)
    assert all(b.lang in RUN for b in blocks.values())
    assert shell_lines("a \\\n  b\n# c\n\nd  # e\n") == ["a    b", "d  # e"]
