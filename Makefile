# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo test fuzz system-deps bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system-deps:
	@scripts/install-system-deps

STATE_DIR ?= .sandboxd-state

run: system-deps $(BIN)/.installed
	$(BIN)/sandboxd serve --listen 127.0.0.1:8080 --state-dir $(STATE_DIR)

demo: system-deps $(BIN)/.installed
	$(BIN)/sandboxd run -- /bin/sh -c 'echo "hello from $$(hostname) as $$(id -u) in $$(pwd)"; ls /'

test: system-deps $(BIN)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

fuzz: $(BIN)/.installed
	$(BIN)/python fuzz/run.py

bench: system-deps $(BIN)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV)
