"""Each list of names is written once (migm/choices.py says where each lives): a tuple, list or set
literal made of two or more backends, precisions, shipped models (or presets) or schedules anywhere
else in migm/ is a second copy, which drifts (a CLI offering a backend the loader refuses, a builder
missing a precision). Derive it from the one list instead (`click.Choice(BUNDLE_BACKENDS)`,
`x in CPU_BACKENDS`, `list(assets.MODELS)`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from migm import assets, choices
from migm.families.presets import PRESETS
from migm.sampling.schedules import SCHEDULES

ROOT = Path(__file__).resolve().parent.parent / "migm"

# name -> (the names, others a list of them may hold, the one module that declares them); "auto" alone
# means many things, so it counts as no backend
VOCABULARIES = {
    "backends": (set(choices.RUNTIME_BACKENDS) - {"auto"}, {"auto"}, "choices.py"),
    "precisions": (set(choices.BUILD_PRECISIONS), set(), "choices.py"),
    "models": (set(assets.MODELS) | set(PRESETS), set(), "families/presets.py"),
    "schedules": (set(SCHEDULES), set(), "sampling/schedules.py"),
}
# files another change is rewriting (the bundle manifest's code): their lists move to migm/choices.py
# with it; empty this when it lands


def _literal_lists(tree: ast.AST):
    """(line, the string constants) of every tuple, list or set literal."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            strings = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(strings) >= 2:
                yield node.lineno, strings


def repeated_lists(root: Path = ROOT) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for line, strings in _literal_lists(ast.parse(path.read_text())):
            for what, (names, others, home) in VOCABULARIES.items():
                # two or more of the names, and nothing else (a manifest's keys may name backends' sections)
                if rel != home and len(set(strings) & names) >= 2 and set(strings) <= names | others:
                    hits.append(f"migm/{rel}:{line}: a list of {what} {strings}")
    return hits


def test_each_list_is_written_once():
    hits = repeated_lists()
    assert not hits, "lists written again (derive them from migm/choices.py, assets.MODELS, ...):\n" + \
        "\n".join(hits)


@pytest.mark.parametrize("source,found", [
    ('BACKENDS = ("ort", "trt")', True),
    ('x = click.Choice(["fp32", "bf16"])', True),
    ('if backend in {"torch", "openvino"}: pass', True),
    ('m = ["tiny-animals", "tiny-scenes"]', True),
    ('m = ("tiny-animals", "dimoo-8b")', True),  # a shipped model and a preset
    ('s = ("arccos", "cosine")', True),
    ('x = ("fp32", "f32")', False),  # one precision and an OpenVINO hint: not a list of precisions
    ('x = backend == "ort" or backend == "trt"', False),  # no literal list
    ('x = {"ort": 1, "trt": 2}', False),  # data per name: a dict, not a list of them
    ('keys = {"tokenizer", "trt", "openvino"}', False),  # a manifest's sections, two named after backends
])
def test_the_scan_finds_a_written_list(tmp_path, source, found):
    (tmp_path / "mod.py").write_text(source + "\n")
    assert bool(repeated_lists(tmp_path)) is found


def test_the_choices_hold_together():
    assert set(choices.BUNDLE_BACKENDS) < set(choices.RUNTIME_BACKENDS)
    assert set(choices.CPU_BACKENDS) <= set(choices.BUNDLE_BACKENDS)
    assert set(choices.CHECKPOINT_BACKENDS) <= set(choices.RUNTIME_BACKENDS)
    for subset in (choices.TORCH_PRECISIONS, choices.FP32_BUNDLE_PRECISIONS, choices.OPENVINO_PRECISIONS):
        assert set(subset) <= set(choices.PRECISIONS)
    assert set(choices.OPENVINO_BEST) <= set(choices.OPENVINO_PRECISIONS)
