# The developer commands, in one place. `make help` lists them.
.PHONY: help up down build test lint fmt bench deploy

help: ## list the commands
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

up: ## build kubewire (release) and start the lab on this machine
	scripts/deps.sh run
	cargo build --release -p kubewire
	./target/release/kubewire lab up --detach

down: ## remove the lab
	./target/release/kubewire lab down

build: ## build every crate (debug)
	cargo build --workspace

test: ## run the whole test suite as root (installs the test clients it needs)
	scripts/test.sh

lint: ## formatting and clippy, as CI runs them
	cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	cargo fmt

deploy: ## regenerate the install manifests in deploy/ from crates/install
	KUBEWIRE_BLESS=1 cargo test -p install deploy_is_up_to_date

bench: ## the benchmarks (figures go to BENCHMARKS.md)
	cargo bench --workspace
