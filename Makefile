# kdbench: `make demo` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdbench-installed

.PHONY: demo test check-leaderboards bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kdbench run --suite smoke
	$(BIN)/kdbench leaderboard --suite smoke
	@echo "The smoke leaderboard is in $(CURDIR)/leaderboards/smoke.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

check-leaderboards: $(STAMP)
	$(BIN)/kdbench leaderboard --check --out leaderboards

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-columns=min,median,mean,stddev,rounds

lint: $(STAMP)
	$(BIN)/ruff check kdbench plugins tests benchmarks
	$(BIN)/ruff format --check kdbench plugins tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
