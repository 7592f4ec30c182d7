# The two commands: `make demo` and `make test`. Both run `make setup` first when needed.
# `make test-fast` is the edit-test loop (FAST below); `make test` stays the whole suite, which CI runs.
PYTHON ?= python3.11
# Everything that needs no cluster (Spark standalone, PostgreSQL, an MLflow server), no multi-night story or whole
# demo run (`story`), and takes seconds rather than tens of seconds (`slow`: whole train-register-score paths, killed
# and rerun `lakeforge` processes, the notebooks, ingest's JSON tests again on its fallback parser).
FAST := not cluster and not story and not slow
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-browser setup-jdk demo test test-fast clean

setup: $(STAMP)
	@$(BIN)/lakeforge setup-jars

# The report tests open the monitoring pages in headless Chromium (Debian's package); the demo does not need it.
# On a fresh machine the package lists may be empty: one `apt-get update`, then the install again.
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) apt-get
setup-browser:
	@command -v chromium >/dev/null 2>&1 || $(APT) install -y chromium 2>/dev/null \
		|| { $(APT) update && $(APT) install -y chromium; } \
		|| { echo "make setup-browser: install Debian's chromium package (apt-get install chromium)"; exit 1; }

# The tests run ingest's one-pass JSON parser, whose jar `setup-jars` compiles with the JDK's javac (Debian's
# package); without a JDK lakeforge still runs (the parser's slower all-Spark path), so the demo does not need it.
setup-jdk:
	@command -v javac >/dev/null 2>&1 || $(APT) install -y openjdk-17-jdk-headless 2>/dev/null \
		|| { $(APT) update && $(APT) install -y openjdk-17-jdk-headless; } \
		|| { echo "make setup-jdk: install a JDK (apt-get install openjdk-17-jdk-headless)"; exit 1; }

# Reinstall only when the dependency pins change.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make setup: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/lakeforge demo

test: setup-jdk setup setup-browser
	$(BIN)/python -m pytest

test-fast: setup-jdk setup setup-browser
	$(BIN)/python -m pytest -m "$(FAST)"

clean:
	rm -rf var .pytest_cache
