# Two commands: `make run` and `make test`. Both create .venv when missing and
# install the project with its extras; nothing else is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/civis-vault up

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

BENCHES ?= upload upload-http erasure keys ledger access events wan instructions

bench: install
	for b in $(BENCHES); do $(BIN)/civis-vault bench $$b --json || exit 1; done

clean:
	rm -rf $(VENV) .civis .pytest_cache .mypy_cache .ruff_cache
