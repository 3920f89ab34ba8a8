# One venv per checkout; torch pinned to 2.13.0, which a CPU machine of this kind
# installs from a local CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test lint install data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	# trt-rtx: TensorRT for RTX builds engines without a GPU, so the tests build real ones here
	$(BIN)/pip install -q -e ".[dev,trt-rtx]"
	# training/evaluation data; --no-deps because its metadata pulls TensorFlow
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	touch $@

install: $(VENV)/.installed

## Set up and generate a grid with the shipped model (CPU): writes migm-out/grid.png
demo: install
	$(BIN)/migm-run --out migm-out

## The linter (ruff; config in pyproject.toml)
lint: install
	$(BIN)/ruff check .

## Set up, lint and run the test suite
test: install lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) migm-out .pytest_cache
