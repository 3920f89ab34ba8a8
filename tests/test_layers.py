"""The package's layers hold: every import of migm code goes down (or sideways where allowed),
and modules import at the top, except for optional heavy dependencies (docs/architecture.md).

    cli
    training | evaluation | serving        (training knows no runtime; evaluation may use it)
    demo                                    (the demo page: runtime and the speed harness)
    runtime                                 (what products embed: no training or benchmark code)
    engines
    export
    families
    models | sampling | data                (sampling knows no models)
    errors, fileio, assets, choices
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "migm"
BOTTOM = {"errors", "fileio", "assets", "choices", "__init__"}
ALLOWED = {
    "errors": set(), "fileio": {"errors"}, "assets": {"errors"}, "choices": set(), "__init__": set(),
    "models": BOTTOM, "sampling": BOTTOM, "data": BOTTOM,
    "families": BOTTOM | {"models", "sampling"},
    "export": BOTTOM | {"families", "models", "sampling"},
    "engines": BOTTOM | {"export", "families", "models", "sampling"},
    "runtime": BOTTOM | {"engines", "families", "models", "sampling"},
    "training": BOTTOM | {"families", "models", "sampling", "data"},
    "evaluation": BOTTOM | {"runtime", "engines", "export", "families", "models", "sampling", "data"},
    "serving": BOTTOM | {"runtime", "engines", "families", "models", "sampling", "data"},
    "demo": BOTTOM | {"evaluation", "runtime", "engines", "families", "models", "sampling", "data"},
    "cli": None,  # the top: anything
}
# the only imports allowed inside functions: optional or heavy dependencies, each with a comment;
# Polygraphy's TensorRT loaders bind to tensorrt or tensorrt_rtx when first imported (engines/trt.py);
# the export stack and the libraries one backend needs stay off the runtime's path (tests/test_slim.py)
LAZY = ("tensorrt", "tensorrt_rtx", "matplotlib", "pytriton", "tritonclient", "ray", "gradio", "polygraphy",
        "onnxruntime", "onnx", "onnx_graphsurgeon", "diffusers", "transformers", "scipy", "openvino", "nncf",
        "migm.runtime.diffusers_pipeline")
# migm modules that pull those in, imported where they are needed (with a comment), off the runtime's path
LAZY_MIGM = ("migm.engines.build", "migm.models.vq_diffusers")
# `migm.MigmPipeline` (migm/__init__.py) resolves the diffusers pipeline on first access: the one
# import that goes up, lazily, so that `import migm` pulls in neither the runtime nor diffusers
ENTRY_POINTS = {("migm/__init__.py", "migm.runtime.diffusers_pipeline")}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        parts = rel.with_suffix("").parts
        yield path, rel, parts


def _package(parts) -> str:
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] != "__init__") else "__init__"


def _targets(node: ast.ImportFrom, parts) -> list[str]:
    """The migm modules an import names, as dotted paths."""
    if node.level:
        here = list(parts) if parts[-1] == "__init__" else list(parts[:-1])
        if parts[-1] == "__init__":
            here = here[:-1]
        base = here[: len(here) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
        if node.module is None:
            return [f"{mod}.{a.name}" for a in node.names]
        return [mod]
    return [node.module] if node.module and node.module.startswith("migm") else []


def _imports():
    for path, rel, parts in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for t in _targets(node, parts):
                    yield rel, parts, node, t


def test_imports_go_down():
    upward = []
    for rel, parts, node, target in _imports():
        src = _package(parts)
        tparts = target.split(".")
        dst = tparts[1] if len(tparts) > 1 else "__init__"
        if dst == "__version__":
            dst = "__init__"
        allowed = ALLOWED[src]
        if (str(rel), target) in ENTRY_POINTS:
            continue
        if dst != src and allowed is not None and dst not in allowed:
            upward.append(f"{rel}:{node.lineno} {src} -> {dst} ({target})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_every_package_has_a_layer():
    packages = {_package(parts) for _, _, parts in _modules()}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


def test_no_function_level_imports_but_optional_heavy_ones():
    bad = []
    for path, rel, parts in _modules():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    lazy = getattr(node, "level", 0) == 0 and all(
                        any(n == m or n.startswith(f"{m}.") for m in LAZY) for n in names)
                    if isinstance(node, ast.ImportFrom) and node.level:
                        lazy = all(t in LAZY_MIGM for t in _targets(node, parts))
                    # the command lines import what a command needs inside it: `--help` starts fast
                    lazy = lazy or _package(parts) == "cli"
                    commented = "#" in lines[node.lineno - 1]
                    if not (lazy and commented):
                        bad.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "function-level imports (allowed only for optional heavy dependencies, with a comment):\n" + \
        "\n".join(bad)


def test_sampling_is_pure_tensors():
    """The sampler knows no models (and nothing but the errors and its own modules)."""
    for rel, parts, node, target in _imports():
        if _package(parts) == "sampling":
            assert target.split(".")[1] in ("sampling", "errors"), f"{rel}:{node.lineno} imports {target}"


@pytest.mark.parametrize("name", ["export", "engines", "runtime", "training", "evaluation", "cli"])
def test_no_family_branches_outside_the_adapters(name):
    """Code outside migm/families asks the family adapter instead of testing which model it holds."""
    pattern = re.compile(r"isinstance\([^)]*\b(LLaDA|MaskGIT|LLaDAShortcut|Shortcut)(Config)?\b|"
                         r"family(\.name)?\s*[!=]=|==\s*\"(llada|maskgit)\"")
    hits = [f"{p.relative_to(ROOT.parent)}:{i}" for p in (ROOT / name).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("name", ["runtime", "serving", "demo"])
def test_what_users_condition_on_is_asked_of_the_family(name):
    """Classes or prompts: the family answers the question at hand (`condition_kind`,
    `conditions_keyword`, `needs_tokenizer`, `split_conditions`, ...), not `family.text`."""
    pattern = re.compile(r"\bfam(ily)?\.text\b")
    hits = [f"{p.relative_to(ROOT.parent)}:{i}" for p in (ROOT / name).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
