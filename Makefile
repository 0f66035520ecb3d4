# Two commands on a fresh machine:  make demo  |  make test
# Each creates .venv and installs everything it needs (Fashion-MNIST from Debian where apt + root exist).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint data clean help

help:
	@echo "make demo   - set up, then the tour on the reference model"
	@echo "make test   - set up, then run the test suite"
	@echo "make lint   - ruff"

$(STAMP): pyproject.toml runtime/pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dvt-edge needs Python 3.11+ (%s is %d.%d): make PYTHON=python3.11 ..." % (sys.executable, *sys.version_info[:2]))'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ./runtime -e '.[all,dev]'
	@$(MAKE) --no-print-directory data
	@touch $(STAMP)

# Debian's dataset-fashion-mnist where we can; otherwise dvt_edge.data downloads it
# from the official URL (checksum-verified) on first use.
data:
	@if [ -d $(FMNIST) ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	  echo "note: apt-get install dataset-fashion-mnist failed; it will be downloaded on first use"; \
	else echo "note: no apt/root: Fashion-MNIST will be downloaded to ~/.cache/dvt-edge on first use"; fi

demo: $(STAMP)
	$(PY) -m dvt_edge.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(VENV)/bin/ruff check dvt_edge runtime apps tests

clean:
	rm -rf $(VENV) build dist *.egg-info runtime/*.egg-info
