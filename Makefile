# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Ultralytics needs torchvision with working compiled ops, which the CPU torch of .venv has no
# match for: its tests get their own venv with the default torch that `pip install ultralytics`
# pulls (CUDA libraries included; it runs on CPU), and this package without the dev extras.
UVENV := .venv-ultralytics
UBIN := $(UVENV)/bin
USTAMP := $(UVENV)/.installed
# Pinned to the versions the tests were written against (override: make ULTRALYTICS=ultralytics).
ULTRALYTICS ?= ultralytics==8.4.190 torch==2.15.0 torchvision==0.29.2

.PHONY: demo test test-ultralytics ecosystem lint format bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on these machines; a bare `torch`
	# requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(USTAMP): pyproject.toml
	$(PY) -m venv $(UVENV)
	$(UBIN)/pip install -q --upgrade pip
	$(UBIN)/pip install -q $(ULTRALYTICS) pytest
	$(UBIN)/pip install -q -e .
	touch $(USTAMP)

demo: $(STAMP)
	$(BIN)/traindoctor demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench ecosystem
	$(BIN)/ruff format --check src tests bench ecosystem
	$(BIN)/python -m pytest -q
	$(MAKE) test-ultralytics

test-ultralytics: $(USTAMP)
	$(UBIN)/python -m pytest -q tests/ultralytics

# Real public training programs and their mutants (ecosystem/README.md). Programs whose
# snapshot is not on the machine are listed as unavailable.
# ECOSYSTEM_ARGS: e.g. `--budget-s 600` (CI: programs first, no case started after 10 minutes).
ECOSYSTEM_ARGS ?=
ecosystem: $(STAMP) $(USTAMP)
	$(BIN)/python ecosystem/run.py --install
	$(BIN)/python ecosystem/run.py $(ECOSYSTEM_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench ecosystem

format: $(STAMP)
	$(BIN)/ruff format src tests bench ecosystem
	$(BIN)/ruff check --fix src tests bench ecosystem

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) $(UVENV) traindoctor-runs .pytest_cache
