"""The slim runtime: `import migm.runtime`, `Pipeline.from_bundle(...)` and generation on each backend,
and `migm-run --help`, import none of the heavy packages (the export stack, quantization, diffusers,
transformers, scipy, the other backends' libraries): each is checked in a fresh interpreter, since
this test process has imported all of them already.

A new backend is one entry in BACKENDS (below); entries whose package (or backend) is missing here skip."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from migm.choices import RUNTIME_BACKENDS
from migm.engines.build import BuildSettings, build_bundle

ROOT = Path(__file__).resolve().parent.parent
# never on the load-and-generate path, except the one library the chosen backend runs on (below)
HEAVY = ("torch.onnx", "onnxscript", "onnx", "onnxruntime", "onnxruntime.quantization", "onnxruntime.transformers",
         "polygraphy", "onnx_graphsurgeon", "diffusers", "transformers", "scipy", "tensorrt", "tensorrt_rtx",
         "openvino", "nncf", "gradio", "selenium", "matplotlib")

pytestmark = pytest.mark.slow  # runs fresh interpreters


def _entry(backend, kind, package, allowed, gpu=False):
    return pytest.param(backend, kind, package, allowed, gpu, id=backend)


# backend, bundle kind it loads, the package it needs (None: torch), modules it may import, needs a GPU
BACKENDS = [
    _entry("torch", "ort", None, set()),
    _entry("ort", "ort", "onnxruntime", {"onnxruntime"}),
    _entry("trt", "trt", "tensorrt", {"tensorrt", "tensorrt_rtx"}, gpu=True),
    _entry("openvino", "openvino", "openvino", {"openvino"}),
]

PROBE = """
import json, sys
HEAVY = {heavy!r}
{body}
print("HEAVY=" + json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
print("TORCH=" + json.dumps("torch" in sys.modules))
"""


def _imported(body: str, tmp_path: Path) -> tuple[set, bool]:
    """The heavy modules (and whether torch) a fresh interpreter has imported after running `body`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIGM_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, body=body)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(line.split("=", 1) for line in res.stdout.splitlines() if line.startswith(("HEAVY=", "TORCH=")))
    return set(json.loads(lines["HEAVY"])), json.loads(lines["TORCH"])


def test_import_runtime_is_slim(tmp_path):
    heavy, _ = _imported("import migm.runtime", tmp_path)
    assert heavy == set(), f"import migm.runtime imports {sorted(heavy)}"


def test_migm_run_help_imports_neither_torch_nor_heavy(tmp_path):
    body = ("from click.testing import CliRunner\nfrom migm.cli.run import main\n"
            "res = CliRunner().invoke(main, ['--help'])\nassert res.exit_code == 0 and '--verify' in res.output, "
            "res.output")
    heavy, torch_imported = _imported(body, tmp_path)
    assert heavy == set(), f"migm-run --help imports {sorted(heavy)}"
    assert not torch_imported, "migm-run --help imports torch (seconds): import it inside the command"


@pytest.fixture(scope="module")
def bundles(tiny, tmp_path_factory):
    """kind -> a tiny fp32 bundle of that kind, built once (None where it cannot be built here)."""
    root = tiny[0]
    out = {}

    def get(kind):
        if kind not in out:
            path = tmp_path_factory.mktemp(f"slim-{kind}") / "tiny.plan"
            build_bundle(path, BuildSettings(precision="fp32", backend=kind), root / "base", root / "vq", root / "sc")
            out[kind] = path
        return out[kind]

    return get


def _skip_unless_here(backend, package, gpu):
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed here")
    if backend not in RUNTIME_BACKENDS:
        pytest.skip(f"this migm has no {backend} backend")
    if gpu and not torch.cuda.is_available():
        pytest.skip(f"the {backend} backend runs on a CUDA GPU, and there is none here")


@pytest.mark.parametrize("backend,kind,package,allowed,gpu", BACKENDS)
def test_from_bundle_and_generate_are_slim(backend, kind, package, allowed, gpu, bundles, tmp_path):
    _skip_unless_here(backend, package, gpu)
    bundle = bundles(kind)
    body = (f"from migm.runtime import Pipeline\n"
            f"pipe = Pipeline.from_bundle({str(bundle)!r}, backend={backend!r})\n"
            f"assert pipe.backend.name == {backend!r}, pipe.backend.name\n"
            "images = pipe.generate([0, 1], steps=3, budget=2, seed=0)\n"
            "assert images.shape[0] == 2")
    heavy, _ = _imported(body, tmp_path)
    assert heavy - allowed == set(), f"the {backend} backend's load-and-generate path imports {sorted(heavy)}"


@pytest.mark.parametrize("backend,kind,package,allowed,gpu", BACKENDS)
def test_migm_run_engine_is_slim(backend, kind, package, allowed, gpu, bundles, tmp_path):
    _skip_unless_here(backend, package, gpu)
    args = ["--engine", str(bundles(kind)), "--backend", backend, "--num", "2", "--steps", "3", "--budget", "2",
            "--out", str(tmp_path / "out")]
    body = ("from click.testing import CliRunner\nfrom migm.cli.run import main\n"
            f"res = CliRunner().invoke(main, {args!r})\nassert res.exit_code == 0, res.output\n"
            f"assert '({backend} backend' in res.output, res.output")
    heavy, _ = _imported(body, tmp_path)
    assert heavy - allowed == set(), f"migm-run --engine X --backend {backend} imports {sorted(heavy)}"


def test_text_model_reads_prompts_without_transformers(tmp_path):
    body = ("from migm.runtime import Pipeline\n"
            "pipe = Pipeline.from_checkpoints(model='tiny-scenes', precision='fp32')\n"
            "assert pipe.generate_tokens(prompts=['a small cat on the left'], steps=2, seed=0).shape[0] == 1")
    heavy, _ = _imported(body, tmp_path)
    assert heavy == set(), f"a text model's path imports {sorted(heavy)}"


def test_tokenizer_without_transformers_gives_transformers_ids(tmp_path):
    """The runtime's tokenizer (tokenizers only) and transformers' read the same files into the same ids,
    special tokens and vocabulary: the shipped tokenizer, and one with added control tokens (Lumina-DiMOO's)."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from migm import assets
    from migm.data.scenes import all_captions
    from migm.models.text import TextTokenizer, encode_prompts, load_tokenizer

    shipped = assets.SCENES / "base.tokenizer"
    ours, theirs = load_tokenizer(shipped), PreTrainedTokenizerFast.from_pretrained(str(shipped))
    assert isinstance(ours, TextTokenizer)
    captions = [c for c, *_ in all_captions()]
    assert torch.equal(encode_prompts(ours, captions, 16, 256), encode_prompts(theirs, captions, 16, 256))

    specials = {"<system>": 20, "</system>": 21, "<uncondition>": 22, "<|endoftext|>": 23}
    words = ["<unk>", "a", "small", "cat", "large", "dog", "image"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)} | specials, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                            additional_special_tokens=["<uncondition>"]).save_pretrained(str(tmp_path / "d"))
    ours, theirs = load_tokenizer(tmp_path / "d"), PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "d"))
    for text in ["a small cat", "<system> a large dog </system>", "<uncondition>", "image image <|endoftext|>"]:
        assert ours(text, add_special_tokens=False)["input_ids"] == theirs(text, add_special_tokens=False)["input_ids"]
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert ours.pad_token_id == theirs.pad_token_id and ours.get_vocab() == theirs.get_vocab()
    assert {i: (t.content, t.special) for i, t in ours.added_tokens_decoder.items()} == \
        {i: (t.content, t.special) for i, t in theirs.added_tokens_decoder.items()}
    template = "<system> image </system> {prompt}"
    assert torch.equal(encode_prompts(ours, ["a cat"], 8, 30, template), encode_prompts(theirs, ["a cat"], 8, 30,
                                                                                      template))
    ours.save_pretrained(tmp_path / "again")  # what save_pretrained of a pipeline writes: the files read
    assert load_tokenizer(tmp_path / "again")("a dog")["input_ids"] == ours("a dog")["input_ids"]
