# Herald: the two commands a newcomer needs are `make run` and `make test`.
# Each installs what is missing first (scripts/setup.sh), so both work on a fresh machine.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)
ADDR ?= 127.0.0.1:3000

.PHONY: run test setup setup-e2e build test-rust test-e2e lint watch bench dist

## Build the release app and serve it on http://$(ADDR) (SQLite in ./data).
run: setup build
	LEPTOS_SITE_ROOT=target/site ./target/release/herald --addr $(ADDR)

## Every test: Rust unit and integration tests, lints, then Playwright end-to-end.
test: setup-e2e lint test-rust build test-e2e

setup:
	@scripts/setup.sh

setup-e2e:
	@scripts/setup.sh --e2e

build:
	cargo leptos build --release --precompress

test-rust:
	cargo test -p app -p herald -p sqlite-pcache

test-e2e:
	cd end2end && npx playwright test

lint:
	cargo fmt --all --check
	cargo clippy -p app -p herald -p sqlite-pcache --all-targets -- -D warnings
	cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings

## Day-to-day development: rebuild and restart on every change.
watch: setup
	cargo leptos watch

bench: setup
	cargo build --release -p herald --bin herald --bin herald-bench

## The binary to ship: LTO, stripped (profile `dist`), with the site beside it in target/site.
dist: setup
	cargo leptos build --release --precompress
	cargo build -p herald --bin herald --profile dist
	@ls -l target/dist/herald
