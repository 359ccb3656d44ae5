# Two entry points, both safe on a fresh clone of main on a fresh machine:
#   make demo   train on UC Merced (../shared/datasets), evaluate (and transfer to aid-sample),
#               build an index, query it
#   make test   run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/datasets/ucmerced
AID    ?= ../shared/datasets/aid-sample
RUNS   ?= runs/ucmerced

.PHONY: install test demo lint coverage bench bench-full

install: $(VENV)/.installed

# torch and torchvision are pinned to the builds that lie on this machine's disk; PyPI's
# torchvision does not load beside other torch builds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

test: install
	$(PY) -m pytest -q

# Line coverage of the suite, subprocesses included (coverage.py's patch = subprocess):
# .ci/coveragerc; the report is written to coverage.txt.
coverage: install
	rm -rf .coverage-data && mkdir .coverage-data
	COVERAGE_RCFILE=.ci/coveragerc $(PY) -m coverage run -m pytest -q
	COVERAGE_RCFILE=.ci/coveragerc $(PY) -m coverage combine -q
	COVERAGE_RCFILE=.ci/coveragerc $(PY) -m coverage report | tee coverage.txt | tail -1

# The benchmarks' quick subset (about 10 minutes), then docs/benchmarks.md's measured section
# rewritten from benchmarks/results/*.json; bench-full: the sizes the goals name (hours).
bench: install
	$(PY) benchmarks/run_all.py --quick

bench-full: install
	$(PY) benchmarks/run_all.py

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(VENV)/bin/dahash-index train --data $(DATA) --bits 64 --out $(RUNS)/model.pt
	$(VENV)/bin/dahash-index eval --data $(DATA) --model $(RUNS)/model.pt --bits 64 \
		--seeds 0,1,2 --variants 'full,attention: none' --jobs 2 --out $(RUNS)/eval
	$(VENV)/bin/dahash-index eval --data $(DATA) --model $(RUNS)/model.pt --bits 64 \
		--seeds 0,1,2 --transfer $(AID) --protocols transfer --out $(RUNS)/transfer
	rm -rf $(RUNS)/index  # the model was just retrained: an older index belongs to another model
	$(VENV)/bin/dahash-index build --shards $(DATA) --index $(RUNS)/index --model $(RUNS)/model.pt \
		--label-from folder
	$(VENV)/bin/dahash-index info $(RUNS)/index
	$(VENV)/bin/dahash-index query ../shared/datasets/ucmerced-tif-sample/airplane/airplane00.tif \
		--index $(RUNS)/index --model $(RUNS)/model.pt --top 10
