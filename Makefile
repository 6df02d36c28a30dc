# onair — the two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/onair-target
export ONAIR_TOOLS_DIR ?= /var/tmp/onair-tools
export PATH := $(HOME)/.cargo/bin:$(PATH)
NEXTEST_PROFILE ?= $(if $(CI),ci,default)

.PHONY: run release image image-base deps build test unit lint fmt fmt-check deploy-check bench soak fuzz clean

## run: the all-in-one server (embedded store, in-process bus, recordings in ./data)
run:
	cargo run --profile fast -p onair --

## release: the optimized binary the Dockerfile ships ($(CARGO_TARGET_DIR)/release/onair)
release:
	cargo build --release --locked -p onair

## image: the runtime image from deploy/Dockerfile under podman (debootstrapped bookworm base, cached), with
## the release binary; prints its size. IMAGE=... to tag it otherwise.
IMAGE ?= localhost/onair:dev
image: deps release
	deploy/image.sh $(CARGO_TARGET_DIR)/release/onair $(IMAGE)

# The image's base (debootstrap, ~1-2 min once, then cached), before the tests so no test waits on it.
image-base: deps
	deploy/image.sh --base

## deps: install every system/Python/npm tool the tests need (idempotent, no prompts)
deps:
	@scripts/install-deps.sh

build:
	cargo build --workspace --bins --tests --locked

## test: install what is missing, then run every test (unit, black-box cluster, browser, container image, deploy checks)
test: deps build image-base fmt-check lint
	cargo nextest run --workspace --locked --profile $(NEXTEST_PROFILE) --no-tests=fail
	ONAIR_BIN=$(CARGO_TARGET_DIR)/debug/onair deploy/check.sh
	scripts/fuzz.sh $(FUZZ_CI_SECONDS)

unit:
	cargo nextest run --workspace --lib --locked

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all
	cargo fmt --manifest-path fuzz/Cargo.toml

fmt-check:
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check

deploy-check: deps build
	ONAIR_BIN=$(CARGO_TARGET_DIR)/debug/onair deploy/check.sh

## fuzz: every cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (make test runs each for
## FUZZ_CI_SECONDS); the corpus grows under /var/tmp/onair-fuzz, crashes fail the run
FUZZ_SECONDS ?= 300
FUZZ_CI_SECONDS ?= 30
fuzz: deps
	scripts/fuzz.sh $(FUZZ_SECONDS)

## soak: a cluster under churn with a fault every minute for SOAK_MINUTES (20) minutes (not a test; ~25 min);
## prints lost messages, orphaned streams, memory and open files. SOAK_ARGS adds e.g. `--pairs 80`.
SOAK_MINUTES ?= 20
soak: deps
	cargo build --release --locked -p onair -p onair-tests --bins
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS) | tee soak-latest.md

## bench: load probes (not tests), and onair vs the socket.io stack it replaces; figures go to BENCHMARKS.md
bench: deps
	cargo build --release --locked -p onair -p onair-tests --bins
	npm ci --prefix bench/signaling --no-audit --no-fund --loglevel=error
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/probe all | tee bench-latest.md
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/versus | tee -a bench-latest.md
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/relay_bench | tee -a bench-latest.md
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/firstframe | tee -a bench-latest.md

clean:
	cargo clean
