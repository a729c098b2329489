# make run   : set up .venv (pinned deps) if needed, then run the headline lab offline
# make test  : set up if needed, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-backends test-all browser lint report notebooks

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: setup
	$(PY) -m labs.lab2_rnn --arch 3

# Debian's chromium renders the HTML report in the browser test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium missing and not root; the browser test will skip"; fi; }

# pytest exits 5 when it collected no test: that is a broken setup, not a pass.
test: setup browser
	$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: no tests collected (broken setup)"; exit 1; fi; \
	exit $$status

# Every lab and kernel on TensorFlow and JAX, in subprocesses (CI runs it too).
test-backends: setup
	$(PY) -m pytest -m backends

test-all: setup browser
	$(PY) -m pytest -m "slow or not slow or backends"

lint: setup
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

report: setup
	$(PY) -m labs.report runs

# Regenerate every notebooks/*.ipynb from its py:percent source (outputs dropped).
notebooks: setup
	$(VENV)/bin/jupytext --to ipynb notebooks/lab*.py
