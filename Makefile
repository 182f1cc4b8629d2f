# vlrouting: `make demo` runs the synthetic end-to-end pipeline, `make test` the test suite, `make demo-readme`
# reruns the demo and writes its closing block into README.md (run it in every change that moves the demo's numbers).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo demo-vit demo-readme install clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

# Two pytest-xdist workers on two cores: one thread per process (tests that need two set it), waiting threads sleep.
test: $(STAMP)
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

demo-vit: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo_vit.sh

demo-readme: demo
	$(PY) -m vlrouting demo-report snap/demo --readme README.md

clean:
	rm -rf $(VENV) snap/demo snap/demo_vit
