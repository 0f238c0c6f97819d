# selm-server — the two commands are `make demo` and `make test`.
SWIFT ?= swift
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
SELM := .build/release/selm

.PHONY: all deps model build test demo bench-model bench-learner bench-engine bench-server bench-sharing proto proto-check clean

all: build

deps:
	@scripts/deps.sh

model:
	@scripts/fetch_model.sh

build: deps
	$(SWIFT) build -c release --product selm

test: deps model
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	SELM_BIN=$(CURDIR)/.build/debug/selm clients/python/run_tests.sh -q

# The main job: `selm serve` on the default model with a fresh data directory, driven by the online
# SELM example (rollouts, a rule-based judge, preferences streamed back, hot-swapped versions).
demo: deps model build
	scripts/demo.sh $(ARGS)

bench-model: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench model --model $(MODEL)

bench-learner: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench learner --model $(MODEL)

bench-engine: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench engine --model $(MODEL)

bench-server: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench server --model $(MODEL)

# Engine and learner busy at once under each --compute-sharing mode (Python client, demo venv).
bench-sharing: deps model build
	scripts/demo.sh --version >/dev/null 2>&1 || true
	.venv-demo/bin/python scripts/bench_sharing.py

clean:
	rm -rf .build

# Regenerate the protobuf-c (Sources/SelmProtoC) and Python (clients/python) code from Proto/selm.proto.
proto:
	@scripts/gen_proto.sh

proto-check:
	@scripts/gen_proto.sh --check
