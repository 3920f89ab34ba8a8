# One venv per checkout; torch pinned to 2.13.0, which a CPU machine of this kind
# installs from a local CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

SERVE_VENV ?= .venv-serve
SBIN := $(SERVE_VENV)/bin

.PHONY: demo test test-fast test-serve lint install data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	# trt-rtx: TensorRT for RTX builds engines without a GPU, so the tests build real ones here;
	# openvino: the CPU target (`migm-export build` and `migm-run` pick it on a CPU)
	$(BIN)/pip install -q -e ".[dev,trt-rtx,openvino,demo]"
	# training/evaluation data; --no-deps because its metadata pulls TensorFlow
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	touch $@

install: $(VENV)/.installed

## Set up and generate a grid with the shipped model (CPU), its default run (shortcut, N=32, B=6):
## writes migm-out/run-NNNN/grid.png (a new numbered folder each time)
demo: install
	$(BIN)/migm-run --out migm-out

## The linter (ruff; config in pyproject.toml)
lint: install
	$(BIN)/ruff check .

## Set up, lint and run the test suite
test: install lint
	$(BIN)/python -m pytest -q

## The tests that need no GPU and no slow step (engine builds, training, servers): the loop while editing
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The serving extras live in a venv of their own: PyTriton pins numpy < 2, the main venv has numpy 2.
$(SBIN)/python:
	$(PY) -m venv $(SERVE_VENV)
	$(SBIN)/pip install -q --upgrade pip

$(SERVE_VENV)/.installed: pyproject.toml | $(SBIN)/python
	$(SBIN)/pip install -q "$(TORCH)"
	$(SBIN)/pip install -q -e ".[dev,serve,ray]"
	touch $@

## The serving tests with a real Triton server and a real local Ray cluster (venv .venv-serve)
test-serve: $(SERVE_VENV)/.installed
	# fail, not skip, when an extra is missing
	$(SBIN)/python -c "import pytriton, tritonclient.http, tritonclient.grpc, ray"
	$(SBIN)/python -m pytest -q -rs tests/test_serving.py tests/test_generate.py tests/test_serve_triton.py \
		tests/test_serve_ray.py

clean:
	rm -rf $(VENV) $(SERVE_VENV) migm-out .pytest_cache
