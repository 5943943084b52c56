# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv bytecode demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "tv-sandbox needs Python >= 3.11 (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Python 3.11's venv brings setuptools, which nothing here uses (3.12's venv no longer does):
	@# its distutils-precedence.pth costs every interpreter of the venv ~1 ms of start-up, the
	@# launcher's and each sandboxed step's included (docs/benchmarks.md).
	$(BIN)/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("setuptools") is None)' \
		&& $(BIN)/python -m pip uninstall --quiet --yes setuptools || true
	touch $(STAMP)

# PYTHONDONTWRITEBYTECODE may be set (it is on our machines): without cached bytecode every
# sandboxed interpreter recompiles the guard at start-up, so compile the package once here.
bytecode: venv
	@$(BIN)/python -m compileall -q sandbox

demo: venv bytecode
	$(BIN)/tv-sandbox demo

test: venv lint bytecode
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check sandbox tests bench pipeline_scripts
	$(BIN)/mypy

bench: venv bytecode
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
