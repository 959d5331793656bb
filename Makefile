# Two commands do everything on a fresh machine:
#   make demo   - venv, install, train on the embedded Fashion-MNIST sample (~1 min), sample grid
#   make test   - venv, install .[test,tensorboard,onnx,hub], run the test suite
#   make test-fast - the suite without the tests marked slow (torchrun, real sweeps, long runs, the browser, fuzzers, benchmark modes)
#   make lint   - ruff check, ruff format --check and mypy on src/ (CI runs it before the tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VAE := $(VENV)/bin/vae
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_SECONDS ?= 60

.PHONY: demo test test-fast lint install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,tensorboard,onnx,hub]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VAE) train --data fashion-mnist-mini --epochs 40 --time-budget $(DEMO_SECONDS) --name demo --overwrite
	$(VAE) sample --run demo -n 64 -o demo-samples.png
	@echo
	@echo "sample grid: $(CURDIR)/demo-samples.png"
	@echo "the run lives in: $$($(PY) -c 'from vaecli.runs.store import resolve_run; print(resolve_run("demo"))')"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache demo-samples.png
