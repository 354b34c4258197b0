# modelmux: the README's two commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: build test demo lint bench smoke clean

build:
	$(CARGO) build --release --bins

test:
	$(CARGO) test --all-targets

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
