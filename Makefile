# The two commands of the Quickstart; each does its own setup, idempotently.
.PHONY: up test lint setup bench

up: setup
	.venv/bin/journeys up

test: lint
	@scripts/setup.sh --test
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

setup:
	@scripts/setup.sh

# Speed, measured beside the raw limits of this machine (see docs/performance.md).
bench: setup
	.venv/bin/python bench/run.py
