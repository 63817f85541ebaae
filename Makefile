# One-command setup and checks. `make setup` is idempotent: it re-installs only when a
# requirements file is newer than the stamp inside .venv. pip's byte-compiling runs on one
# core, so setup byte-compiles the installed packages itself on all cores afterwards
# (100 -> 65-77 s for the whole install on 2 cores). It is only a cache: a file that does
# not compile under this Python (torch ships one written for 3.12) is skipped, as pip skips it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-other-cpus lint format demo bench gpu-check serve clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile \
		-r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q

# The tests whose numbers lean on CPU kernels (sharded = single-process maps, resume,
# release-exact maps, the fast/int8 bars, packed weights), again with the kernels of the
# other CPU kinds this project runs on: oneDNN and ATen capped at AVX-512 BF16/VNNI without
# AMX (the AMD EPYC kind), then at AVX2 (no AVX-512: many laptops). On a CPU without the
# hidden feature a cap changes nothing.
ISA_TESTS := tests/test_benchmark.py tests/test_packed_conv.py tests/test_fast.py \
	tests/test_inference.py tests/test_training.py
test-other-cpus: setup
	ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q $(ISA_TESTS)
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q $(ISA_TESTS)

DEMO_DATA := data/demo
DEMO_RUN := runs/demo
DEMO_OUT := outputs/demo

# The whole job on generated data, on CPU: data, training, inference, metrics, baselines.
# Validation and test images are cut from photographs training never sees (test); a
# second test split (test_seen) is cut from the training photographs, for comparison.
demo: setup
	$(BIN)/python make_synthetic_data.py --out $(DEMO_DATA) --train 2500 --val 60 --test 480 \
		--test-seen 480 --size 192 --seed 0
	$(BIN)/python train_demo.py --config configs/demo.yaml --out_dir $(DEMO_RUN)
	for split in test test_seen; do \
		$(BIN)/python infer_mvss_calmetrics.py --model_path $(DEMO_RUN)/checkpoints/best.pt \
			--test_file $(DEMO_DATA)/$$split.txt --save_dir $(DEMO_OUT) --resize 192 --overlay \
			--amp auto --channels-last --batch-size 8 || exit $$?; \
	done
	@echo
	@$(BIN)/python -m common.evaluation.baselines \
		$(DEMO_DATA)/test.txt $(DEMO_OUT)/test/best/summary.json \
		$(DEMO_DATA)/test_seen.txt $(DEMO_OUT)/test_seen/best/summary.json \
		--names "unseen photos (test)" "seen photos (test_seen)"
	@echo
	@echo "maps:          $(DEMO_OUT)/test/best/pred/ (binary: bin/, overlays: overlay/)"
	@echo "per image:     $(DEMO_OUT)/test/best/per_image.csv"
	@echo "photo splits:  $(DEMO_DATA)/photo_splits.csv"
	@echo "contact sheet: $(DEMO_DATA)/contact_sheet.png"
	@echo "training log:  $(DEMO_RUN)/log.csv"

# The web app on the demo's checkpoint (or MODEL=path/to/checkpoint.pt).
serve: setup
	@if [ -n "$(MODEL)" ]; then $(BIN)/python serve.py --model_path "$(MODEL)"; \
	elif [ -f $(DEMO_RUN)/checkpoints/best.pt ]; then $(BIN)/python serve.py --model_path $(DEMO_RUN)/checkpoints/best.pt; \
	else echo "error: no checkpoint: run make demo first, or make serve MODEL=path/to/checkpoint.pt" >&2; exit 2; fi

bench: setup
	$(BIN)/python -m bench.isolated model

# Every CUDA path once, in one JSON + Markdown report (bench/results/gpu_check/); on a
# machine without CUDA it says so and exits with 2.
gpu-check: setup
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
