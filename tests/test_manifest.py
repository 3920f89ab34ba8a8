"""The typed manifest (engines/manifest.py): bundles written before it load unchanged, and every kind
of wrong field is refused by the declarations, naming the field."""

import copy
import json
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from migm.engines import manifest as mf
from migm.engines.bundle import manifest_digest
from migm.engines.manifest import Manifest
from migm.errors import BundleError

DATA = Path(__file__).parent / "data" / "manifests"
# written by the untyped builder that came before (an ORT fp32 bundle of tiny-animals; an OpenVINO int8
# bundle of tiny-scenes, with its tokenizer, calibration and `openvino` entry)
OLD = sorted(DATA.glob("*.json"))


def _doc(name="ort-fp32"):
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("path", OLD, ids=lambda p: p.stem)
def test_old_manifests_read_and_write_back_unchanged(path):
    doc = json.loads(path.read_text())
    m = Manifest.from_dict(doc)
    assert m.to_dict() == doc and manifest_digest(m.to_dict()) == doc["digest"]
    assert m.components["base"].file in ("base.onnx", "base.xml")
    assert m.components["base"].outputs[1].shape[1] == m.model_spec.num_tokens  # logits [batch, L, K]
    assert m.sampling.steps == doc["sampling"]["steps"]


def test_typed_access():
    m = Manifest.from_dict(_doc("openvino-int8"))
    assert m.backend == "openvino" and m.openvino.inference_precision in ("bf16", "f32")
    assert m.tokenizer.files and set(m.tokenizer.sha256) == set(m.tokenizer.files)
    assert m.calibration.file == "calibration.npz" and m.trt is None
    names = [rel for rel, *_ in m.files()]
    assert "base.xml" in names and "base.bin" in names and "torch/base.safetensors" in names
    assert any(n.startswith("tokenizer/") for n in names) and "calibration.npz" in names


def _refused(edit, match, name="ort-fp32"):
    doc = _doc(name)
    edit(doc)
    with pytest.raises(BundleError, match=match):
        Manifest.from_dict(doc)


def test_unknown_and_missing_keys_are_refused():
    _refused(lambda d: d.update(extra=1), "manifest has unknown keys extra")
    _refused(lambda d: d["components"]["base"].update(script="x.py"), "components.base has unknown keys script")
    _refused(lambda d: d["components"]["base"]["inputs"][0].update(note=1), r"components.base.inputs\[0\] has unknown")
    _refused(lambda d: d.pop("tools"), "manifest lacks tools")
    _refused(lambda d: d["components"]["decoder"].pop("sha256"), "components.decoder lacks sha256")
    _refused(lambda d: d["openvino"].pop("cpu"), "openvino lacks cpu", "openvino-int8")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["components"]["base"].update(bytes="12"), r"components.base.bytes must be a count"),
    (lambda d: d["components"]["base"].update(bytes=-1), r"components.base.bytes must be a count"),
    (lambda d: d["components"]["base"].update(bytes=True), r"components.base.bytes must be a count"),
    (lambda d: d["components"]["base"].update(sha256="abc"), r"components.base.sha256 must be a sha256"),
    (lambda d: d["components"]["base"].update(precision="fp8"), r"components.base.precision is 'fp8', which is unkn"),
    (lambda d: d.update(backend="tensorflow"), r"backend is 'tensorflow', which is unknown"),
    (lambda d: d.update(family="gpt"), "family must be a model family"),
    (lambda d: d["components"]["base"].update(rel_error_vs_torch=-1.0), "rel_error_vs_torch must be a finite number"),
    (lambda d: d["components"]["base"]["inputs"][0].update(dtype="complex64"), r"dtype is 'complex64'"),
    (lambda d: d["components"]["base"]["inputs"][0].update(shape=[1.5]), r"shape\[0\] must be"),
    (lambda d: d["components"].pop("decoder"), "components must be some of base, shortcut, decoder"),
    (lambda d: d["components"].update(vae=d["components"]["base"]), "components must be some of"),
    (lambda d: d["checkpoints"]["base"]["sha256"].pop("json"), "the sha256 of its .safetensors and .json"),
    (lambda d: d.update(class_names=["x" * 201] * 10), "names of 1..200 characters"),
    (lambda d: d.update(class_names=["a", "b"]), "class_names has 2 names for 10 classes"),
    (lambda d: d["spec"].update(width=7), "spec does not match config.base"),
    (lambda d: d["sampling"].update(steps=0), "sampling:"),
    (lambda d: d.update(sampling=[]), "sampling: sampling settings must be a JSON object"),
    (lambda d: d["config"].update(base={"grid": "x"}), "config.base does not describe a maskgit model"),
    (lambda d: d["components"]["base"]["outputs"][1].update(shape=["batch", 16, 99]),
     r"components.base.outputs: logits is .* but config.base gives"),
])
def test_wrong_values_are_refused_naming_the_field(edit, match):
    _refused(edit, match)


def test_another_version_names_the_command_that_rebuilds():
    _refused(lambda d: d.update(version=1), r"bundle version 1; this migm reads version 2: build it again with "
                                            r"`migm-export build`")
    _refused(lambda d: d.update(format="other"), "not a migm bundle manifest")


def test_optional_fields_are_absent_not_null():
    m = Manifest.from_dict(_doc())
    doc = m.to_dict()
    assert m.tokenizer is None and "tokenizer" not in doc and "trt" not in doc
    assert "data_file" not in doc["components"]["base"] and "onnx" not in doc["components"]["base"]
    assert doc["config"]["shortcut"] is not None  # required, nullable: written even when null
    none = copy.deepcopy(doc)
    none["config"]["shortcut"] = None
    assert Manifest.from_dict(none).to_dict()["config"]["shortcut"] is None


def test_every_field_type_is_one_the_reader_knows():
    """A new field of a type `_value` cannot read would fail only on the first bundle that has it: fail here."""
    def walk(cls, seen):
        import typing
        for f in fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            stack = [tp]
            while stack:
                t = stack.pop()
                args = typing.get_args(t)
                if is_dataclass(t) and t not in seen:
                    seen.add(t)
                    walk(t, seen)
                elif args and typing.get_origin(t) is not typing.Literal:
                    stack += [a for a in args if a is not type(None)]
                else:
                    assert t in (str, int, float, bool, typing.Any, mf.SamplerConfig) or is_dataclass(t) or \
                        typing.get_origin(t) is typing.Literal, f"{cls.__name__}.{f.name}: {t}"
    walk(Manifest, set())
