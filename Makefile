# zlog developer tasks. Every target creates the virtual environment first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
KAFKA_PORT ?= 9092
PYTEST_ARGS ?= -n auto

.PHONY: venv demo test lint format kafka-up kafka-down kafka-status bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

kafka-up: venv
	$(PY) scripts/kafka start --port $(KAFKA_PORT)

kafka-down: venv
	$(PY) scripts/kafka stop --port $(KAFKA_PORT)

kafka-status: venv
	$(PY) scripts/kafka status --port $(KAFKA_PORT)

# Starts Kafka when none listens and stops it afterwards only if it did;
# extra arguments for zlog demo: make demo DEMO_ARGS="--repeat 10".
demo: venv
	VENV=$(VENV) KAFKA_PORT=$(KAFKA_PORT) scripts/demo $(DEMO_ARGS)

test: venv kafka-up
	ZLOG_TEST_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check zlog tests benchmarks examples scripts/kafka
	$(VENV)/bin/ruff format --check zlog tests benchmarks examples scripts/kafka

format: venv
	$(VENV)/bin/ruff format zlog tests benchmarks examples scripts/kafka

# Five paths into the same Kafka, side by side (benchmarks/run.py); about
# 15 minutes. BENCH_ARGS=--quick runs in about two.
BENCH_ARGS ?= --workers 1,8,64
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(BENCH_STAMP) kafka-up
	$(PY) benchmarks/run.py --bootstrap-servers 127.0.0.1:$(KAFKA_PORT) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
