# The README's commands. Every target creates .venv and installs the pinned, tested
# versions (constraints.txt) on first use, plus the Debian GL libraries MuJoCo renders
# with (scripts/system-deps.sh), so a fresh clone needs nothing installed by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -q

.PHONY: install system-deps test demo lint bench clean

install: $(STAMP)

system-deps:
	scripts/system-deps.sh

$(STAMP): pyproject.toml constraints.txt scripts/system-deps.sh
	scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/lewm demo --out demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/render_speed.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/plan_speed.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
