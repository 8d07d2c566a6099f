# kdbench: `make demo` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdbench-installed
# Extra pip options, e.g. PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" for CPU-only torch.
PIP_EXTRA ?=
# The package extras installed into .venv (CI adds dali: `make test EXTRAS=dev,dali`).
EXTRAS ?= dev

.PHONY: demo test check-leaderboards check-smoke bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# CPU threads of torch for `make demo` (e.g. THREADS=1 on a busy machine); empty: torch's default.
THREADS ?=
DEMO_OPTIONS := $(if $(THREADS),--threads $(THREADS))

demo: $(STAMP)
	$(BIN)/kdbench run --suite smoke $(DEMO_OPTIONS)
	$(BIN)/kdbench leaderboard --suite smoke
	@echo "The smoke leaderboard is in $(CURDIR)/leaderboards/smoke.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

check-leaderboards: $(STAMP)
	$(BIN)/kdbench leaderboard --check --out leaderboards

# Re-run the smoke suite from scratch and compare its cells with the committed records: a change that
# moves a smoke result by more than 2 top-1 points (mean over 3 seeds) fails.
SMOKE_DIR := .ci-smoke
check-smoke: $(STAMP)
	rm -rf $(SMOKE_DIR)
	$(BIN)/kdbench run --suite smoke --results $(SMOKE_DIR)/kdbench.sqlite --work-dir $(SMOKE_DIR)/runs --no-progress
	$(BIN)/kdbench leaderboard --suite smoke --results $(SMOKE_DIR)/kdbench.sqlite --out $(SMOKE_DIR)/leaderboards
	$(BIN)/kdbench compare leaderboards/smoke.jsonl $(SMOKE_DIR)/leaderboards/smoke.jsonl --tolerance 2 --fail-on any

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-columns=min,median,mean,stddev,rounds

lint: $(STAMP)
	$(BIN)/ruff check kdbench plugins tests benchmarks
	$(BIN)/ruff format --check kdbench plugins tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info $(SMOKE_DIR)
