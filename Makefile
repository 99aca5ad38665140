# Two entry points for a fresh machine: `make demo` (set up, then the main job) and `make test`
# (set up, then the test suite). Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fnostab-installed
# A torch already importable (a GPU machine's own build, seen through --system-site-packages) is kept:
# its version replaces the CPU pin of constraints.txt, so pip never swaps it for another build.
TORCH_PIN_CMD = $(PY) -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@pin=$$($(TORCH_PIN_CMD)); \
	  if [ -n "$$pin" ]; then echo "keeping installed torch $$pin"; \
	    sed "s/^torch==.*/torch==$$pin/" constraints.txt > $(VENV)/constraints.txt; \
	  else cp constraints.txt $(VENV)/constraints.txt; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[test,ray,tensorboard,mlflow]"
	@touch $(STAMP)

# The three Stage A arms over a learning-rate grid that reaches the unstable band (scripts/bench_shootout.py
# times it): Stage A at the rates where the control fails, Stage B from LR sensitivity and boundaries.
demo: install
	$(VENV)/bin/fnostab shootout --preset cpu --seeds 2 --lrs 1e-3,1e-2,3e-2,1e-1 --epochs 5 --jobs 2 --out runs/demo

# Lint first (seconds), with the project's own configuration, so CI checks it too.
test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# The quick benchmarks (minutes); scripts/bench_shootout.py (whole shootouts, about an hour) is run by hand.
bench: install
	$(PY) scripts/bench_simulate.py
	$(PY) scripts/bench_models.py
	$(PY) scripts/bench_train.py --repeats 7 --epochs 2 --threads 1
	$(PY) scripts/bench_monitors.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
