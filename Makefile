# Two commands do all set-up: `make test` and `make demo`. Both create .venv when it is missing
# and (re)install the project into it when setup.py changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

# The whole system end to end on local defaults; rerun after a kill to go on where it stopped.
demo: $(STAMP)
	$(BIN)/qtopt demo --run runs/demo

clean:
	rm -rf $(VENV) build dist *.egg-info
