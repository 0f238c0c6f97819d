# selm-server — the two commands are `make demo` and `make test`.
SWIFT ?= swift
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
SELM := .build/release/selm

.PHONY: all deps model build test demo compare bench-model bench-learner bench-engine bench-precision bench-publish bench-kernels bench-server bench-sharing bench-cluster bench-vs-llamacpp bench-load bench-http soak-restarts fuzz fuzz-seeds proto proto-check clean

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
	SELM_BIN=$(CURDIR)/.build/debug/selm clients/python/run_ray_tests.sh -q
	SELM_BIN=$(CURDIR)/.build/debug/selm scripts/check_checkpoint.sh

# The main job: `selm serve` on the default model with a fresh data directory, driven by the online
# SELM example (rollouts, a rule-based judge, preferences streamed back, hot-swapped versions).
demo: deps model build
	scripts/demo.sh $(ARGS)

# SELM against DPO and an α sweep (0, 1e-3, 1e-2, 1e-1) × 3 seeds at equal step budgets on two judges
# (concise, overlap), reproducible runs of the online example's experiment mode; prints mean and 95 %
# CI per setting, writes compare-out/ (summary.md, results.jsonl, compare.png). About an hour on 2 cores.
compare: deps model build
	scripts/compare.sh $(ARGS)

bench-model: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench model --model $(MODEL)

bench-learner: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench learner --model $(MODEL)

# ARGS="--engine-product bf16|q8|q4": the product the ceilings replay (default f32: OpenBLAS sgemm);
# ARGS=--trace-only: the 32-prompt admission step by step (--decoding-step-tokens N to try a budget).
bench-engine: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench engine --model $(MODEL) $(ARGS)

# The precision contract: each compact engine precision (bf16, q8, q4) against the f32 engine — mean and
# max |Δ log-prob| per token over Tests/ModelTests/Fixtures/precision_text.txt (1000 tokens), greedy
# agreement on 16 chat prompts × 64 tokens — with snapshot size, snapshot-making time, decode speed.
bench-precision: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench precision --model $(MODEL)

# What publishing every second costs the engine in PRECISION (default bf16, the serving default):
# the 32 × (64 + 128) job without and with a new version every second, each a snapshot made by the
# learner's optimizer pass (whose cost on the learner's thread it prints first); ARGS="--snapshot
# pack" has the engine pack the live f32 weights on publish instead (RefreshWeights, replicas).
PRECISION ?= bf16
bench-publish: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench publish --model $(MODEL) --engine-precision $(PRECISION) $(ARGS)

# The project's own bf16 / 8-bit products on SmolLM2's shapes beside the ceilings measured in the
# same run (bf16/VNNI peaks, streaming read, sgemm); OpenBLAS kernel cores compared. ARGS=--quick
# for a shorter run, ARGS="--threads 1" for one thread; SELM_KERNELS=avx2|scalar|... forces a path.
bench-kernels: deps
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench kernels $(ARGS)

# selm's engine vs llama.cpp (built once into ~/.cache/selm-server, ~15-20 min) on the same jobs,
# alternately; prints the ratios. SELM_ARGS go to `selm-bench job` (e.g. --engine-precision f32);
# B1=q8,q4 also runs selm's batch-1 decode in those precisions in the same rounds.
bench-vs-llamacpp: deps model
	$(SWIFT) build -c release --product selm-bench
	python3 scripts/bench_vs_llamacpp.py --model $(MODEL) --rounds $(or $(ROUNDS),3) --selm-args "$(SELM_ARGS)" --b1-precisions "$(B1)"

bench-server: deps model
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench server --model $(MODEL)

# `selm serve` (release, default model, learner on) under CLIENTS concurrent clients for SECONDS:
# per-kind latency, failures by code, server RSS, and a small request's admission latency while long
# generations run on two older versions.
CLIENTS ?= 64
SECONDS ?= 60
bench-load: deps model build
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench load --model $(MODEL) --selm $(SELM) --clients $(CLIENTS) --seconds $(SECONDS)

# The OpenAI HTTP API beside the socket protocol on one `selm serve` (release, learner off): request
# rate, p50 and p99 of a 1-token completion at CLIENTS connections, ROUNDS alternating phases of
# PHASE_SECONDS per protocol, and the ratio.
ROUNDS ?= 3
PHASE_SECONDS ?= 10
bench-http: deps model build
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench http --model $(MODEL) --selm $(SELM) --clients $(CLIENTS) --seconds $(PHASE_SECONDS) --rounds $(ROUNDS)

# CYCLES rounds of {serve with learner, clients submit preference batches, kill -9 at a random moment
# (some during a checkpoint save), restart}; then every acknowledged row must be in the log once and
# consumed by the learner.
CYCLES ?= 20
soak-restarts: deps model build
	$(SWIFT) build -c release --product selm-bench
	.build/release/selm-bench soak --model $(MODEL) --selm $(SELM) --cycles $(CYCLES)

# Coverage-guided fuzzing (libFuzzer + AddressSanitizer) of the frame/envelope decoders and the
# preference log's recovery scan, FUZZ_SECONDS per target (FUZZ_RUNS=N: N inputs instead). Fuzz/README.md.
FUZZ_SECONDS ?= 120
FUZZ_FLAGS := --build-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING
fuzz: deps
	$(SWIFT) build $(FUZZ_FLAGS) --product fuzz-wire
	$(SWIFT) build $(FUZZ_FLAGS) --product fuzz-log
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh wire log

# Rewrite the generated seeds of Fuzz/corpus (regression-* inputs are kept).
fuzz-seeds: deps
	$(SWIFT) build --product fuzz-wire
	$(SWIFT) build --product fuzz-log
	.build/debug/fuzz-wire --write-seeds Fuzz/corpus/wire Tests/WireTests/Fixtures/python_frames.json
	.build/debug/fuzz-log --write-seeds Fuzz/corpus/log

# Engine and learner busy at once under each --compute-sharing mode (Python client, demo venv).
bench-sharing: deps model build
	scripts/demo_venv.sh
	.venv-demo/bin/python scripts/bench_sharing.py

# One learner and rollout replicas (plain processes, release build) through selm_client.Cluster:
# publish → first sample at a replica, bytes per version (bf16 and f32 engines), rollout throughput
# with 1 and 2 replicas. ARGS go to scripts/bench_cluster.py (--seconds, --clients, --publications).
bench-cluster: deps model build
	scripts/demo_venv.sh
	.venv-demo/bin/python scripts/bench_cluster.py $(ARGS)

clean:
	rm -rf .build .build-fuzz

# Regenerate the protobuf-c (Sources/SelmProtoC), Python (clients/python) and Swift (Sources/Wire/Generated)
# code from Proto/selm.proto; proto-check fails when a committed file differs from what the .proto gives.
proto:
	@scripts/gen_proto.sh

proto-check:
	@scripts/gen_proto.sh --check
