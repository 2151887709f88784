# Two commands do all the set-up on a fresh machine with python3, pip and make:
#   make run    install, then train the baseline on the embedded data (a few minutes on CPU)
#   make test   install with the test extras, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: install install-test run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(PY) -m foundry.train experiments/baseline.yaml

test: install-test
	OMP_NUM_THREADS=2 $(PY) -m pytest tests

clean:
	rm -rf $(VENV) runs build *.egg-info
