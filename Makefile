# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo test fuzz system-deps bench clean native

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The compiled stage runner each sandbox execs as its PID 1 (sandboxd/native/stage.c).
NATIVE := sandboxd/native/sandboxd-stage
$(NATIVE): sandboxd/native/stage.c sandboxd/native/__init__.py $(BIN)/.installed
	$(BIN)/python -m sandboxd.native

native: $(NATIVE)

system-deps:
	@scripts/install-system-deps

STATE_DIR ?= .sandboxd-state

run: system-deps $(BIN)/.installed $(NATIVE)
	$(BIN)/sandboxd serve --listen 127.0.0.1:8080 --state-dir $(STATE_DIR)

demo: system-deps $(BIN)/.installed $(NATIVE)
	$(BIN)/sandboxd run -- /bin/sh -c 'echo "hello from $$(hostname) as $$(id -u) in $$(pwd)"; ls /'

test: system-deps $(BIN)/.installed $(NATIVE)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

fuzz: $(BIN)/.installed
	$(BIN)/python fuzz/run.py

bench: system-deps $(BIN)/.installed $(NATIVE)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(NATIVE)
