# Set-up and the two main commands. `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
# where pip finds torch: empty uses pip's own configuration (this machine's local wheels); on plain PyPI
# pass TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint types unit bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m duet.demo

lint: $(STAMP)
	$(PY) -m ruff check duet tests bench signaling_server.py
	$(PY) -m ruff format --check duet tests bench signaling_server.py

types: $(STAMP)
	$(PY) -m mypy duet

unit: $(STAMP)
	$(PY) -m pytest -q

test: lint types unit

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
