# The two commands of the Quickstart; each does its own setup, idempotently.
.PHONY: up demo test lint setup bench bench-funnel bench-ingest

up: setup
	.venv/bin/journeys up

# `up` with synthetic storefront traffic and the demo's outreach rules (README).
demo: setup
	.venv/bin/journeys up --demo

test: lint
	@scripts/setup.sh --test
	.venv/bin/python -m pytest -n 2 --dist loadfile

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

setup:
	@scripts/setup.sh

# Speed, measured beside the raw limits of this machine (see docs/performance.md).
bench: setup
	.venv/bin/python bench/run.py

# The 4-step funnel over 10M events of 1M customers: plain windowFunnel vs ours.
# The generated data is kept in bench/results/data-10m and reused by later runs.
bench-funnel: setup
	.venv/bin/python -m bench.funnel --events 10000000 --customers 1000000 --runs 7 \
		--data bench/results/data-10m --json bench/results/funnel-10m.json

# The ingest gateway alone (no worker) beside a raw librdkafka producer.
bench-ingest: setup
	.venv/bin/python -m bench.ingest --events 100000 --repeats 3 --processes 2
