# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both create or reuse a local virtual environment in .venv with pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
TESTDEPS := $(VENV)/.installed-test

.PHONY: demo test install install-test clean

# `make demo` installs robsal's runtime dependencies only; `make test` adds the test and
# reference libraries (pytest, hypothesis, torchattacks, grad-cam, quantus, selenium, ray, timm, pydicom).
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(RUNTIME)

$(TESTDEPS): $(RUNTIME) pyproject.toml
	$(PY) -m pip install -q -e ".[test]"
	touch $(TESTDEPS)

install: $(RUNTIME)

install-test: $(TESTDEPS)

demo: $(RUNTIME)
	$(VENV)/bin/robsal run --config quick --out runs/quick

test: $(TESTDEPS)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
