# neuro-rit: the two commands are `make demo` and `make test`; both set up .venv when needed.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.setup-done
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo-quick test test-slow test-all test-slurm base-model benchmark bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

test-all: setup
	$(PY) -m pytest -q -m "" tests

benchmark: setup
	$(PY) -m benchmarks.embedded.benchmark --config configs/embedded.yaml

base-model: setup
	$(PY) scripts/train_base_model.py --config configs/embedded.yaml

demo: setup
	$(PY) scripts/demo.py --config configs/embedded.yaml

demo-quick: setup
	$(PY) scripts/demo.py --config configs/embedded.yaml --quick

clean:
	rm -rf outputs runs

test-slurm: setup
	bash scripts/slurm/test_local_cluster.sh
