"""The names migm accepts for backends and precisions, each list written once: the command lines'
`click.Choice`s, the builders' checks and the loaders' checks all derive from these.

Bottom layer, no imports (not even torch): `migm-run --help` reads its choices from here and
starts fast (tests/test_slim.py). The other lists live beside their data, each once too: the
shipped models are `migm.assets.MODELS`, the named presets `migm.families.presets.PRESETS`, the
mask schedules `migm.sampling.schedules.SCHEDULES`, the strategies `migm.sampling.strategies`.
`tests/test_choices.py` fails when a literal list of these names is written anywhere else.
"""

# ---- backends ----

# the kinds of bundle `migm-export build` makes, named by the runtime that runs its files (ONNX
# Runtime .onnx, TensorRT .engine, OpenVINO IR .xml + .bin): a manifest's "backend"
BUNDLE_BACKENDS = ("ort", "trt", "openvino")
# `migm-export build --backend`: a bundle kind, or auto (the fastest here: engines/targets.py)
BUILD_BACKENDS = ("auto",) + BUNDLE_BACKENDS
# what runs a bundle (`Pipeline.from_bundle`, `--backend` of migm-run, -generate, -serve, -demo):
# its own runtime, torch (over the bundle's checkpoints), or auto (the fastest for bundle and machine)
RUNTIME_BACKENDS = ("auto", "torch") + BUNDLE_BACKENDS
# what runs checkpoints (`--model`, `--base`, a saved pipeline): torch only; auto means torch there
CHECKPOINT_BACKENDS = ("auto", "torch")
# the bundle backends that run on the CPU unless told otherwise (ONNX Runtime takes its CUDA provider
# only for device="cuda"; OpenVINO runs on the CPU only): the default bundle is built for one of them
CPU_BACKENDS = ("ort", "openvino")

# ---- precisions ----

# what one component (base, shortcut, decoder) of a bundle is built in: a manifest entry's "precision"
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# a bundle's precision (`migm-export build --precision`, a manifest's "precision"): one of the
# above for every component (bf16: OpenVINO only), or best (each component its fastest kind)
BUILD_PRECISIONS = PRECISIONS + ("best",)
# the torch backend's: float32 (upstream's arithmetic) or bfloat16 (`--precision` of checkpoints)
TORCH_PRECISIONS = ("fp32", "bf16")
# bundle precisions whose checkpoints the torch backend runs in float32: fp32, and int8, whose
# quantization lives in the graphs only; the others' checkpoints run in bfloat16 there
FP32_BUNDLE_PRECISIONS = ("fp32", "int8")
# what one component of an OpenVINO bundle may be: no fp16 graphs, since its CPUs' half precision is bf16
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
# what an OpenVINO `best` build times for each of its base and shortcut (the fastest is kept)
OPENVINO_BEST = ("bf16", "int8")
