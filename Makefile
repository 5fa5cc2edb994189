# Two commands on a fresh machine:  `make train`  and  `make test`  (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: train test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

train: $(VENV)/.installed  ## set up, then train the default recipe (extra overrides: make train ARGS="optimizer=sgd")
	$(PY) train.py $(ARGS)

test: $(VENV)/.installed  ## set up, then run the whole test suite (two workers, one test file each at a time)
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

bench: $(VENV)/.installed  ## set up, then time the data paths side by side (docs/benchmarks.md)
	$(PY) bench/speed.py $(ARGS)

clean:
	rm -rf $(VENV) logs
