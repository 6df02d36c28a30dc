# onair — the two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/onair-target
export ONAIR_TOOLS_DIR ?= /var/tmp/onair-tools
export PATH := $(HOME)/.cargo/bin:$(PATH)
NEXTEST_PROFILE ?= $(if $(CI),ci,default)

.PHONY: run release image image-base deps build test unit lint fmt fmt-check deploy-check bench clean

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

unit:
	cargo nextest run --workspace --lib --locked

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

deploy-check: deps build
	ONAIR_BIN=$(CARGO_TARGET_DIR)/debug/onair deploy/check.sh

## bench: load probes (not tests), and onair vs the socket.io stack it replaces; figures go to BENCHMARKS.md
bench: deps
	cargo build --release --locked -p onair -p onair-tests --bins
	npm ci --prefix bench/signaling --no-audit --no-fund --loglevel=error
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/probe all | tee bench-latest.md
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/versus | tee -a bench-latest.md
	ONAIR_BIN=$(CARGO_TARGET_DIR)/release/onair $(CARGO_TARGET_DIR)/release/relay_bench | tee -a bench-latest.md

clean:
	cargo clean
