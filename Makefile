# Every target sets up .venv on its own the first time (torch comes from the local wheel cache).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m metaprune.demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/encode.py
	$(PY) benchmarks/metanet.py --threads 1

clean:
	rm -rf $(VENV) build *.egg-info
