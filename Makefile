# pfmbench: make setup | bench | test | test-all | lint | lock | clean
# `make bench MODEL=phikon DATASET=nuclei-sample WEIGHTS=random` is the embedded default run.

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    ?= .venv
BIN     := $(VENV)/bin

MODEL    ?= phikon
DATASET  ?= nuclei-sample
STRATEGY ?= frozen
WEIGHTS  ?= random
RUNTIME  ?= auto
EPOCHS   ?=
SEED     ?= 42
PRESET   ?=
TASK     ?= segmentation
OUT      ?= runs/distill
DISTILL_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers for the fast tier; a test file runs whole on one worker (module fixtures).
# test-all runs the fast tier so too, then the slow, docker and ray tiers in one process: on 2 cores
# their kill-and-resume runs and the docker push only contend (measured: 2051 s on 2 workers against
# 1854 s in one).
TEST_WORKERS ?= 2
FAST    := not slow and not docker and not ray and not gpu

.PHONY: setup setup-gpu bench distill sweep report test test-all test-ci lint perf gpu-check perf-slides perf-zoo perf-train images publish verify-images base-offline lock clean help

help:
	@echo "make setup                      create $(VENV) from requirements.lock"
	@echo "make setup-gpu                  on a GPU machine: add the GPU set (requirements-gpu.lock: onnxruntime-gpu)"
	@echo "make bench MODEL=.. DATASET=..  leaderboard rows [STRATEGY=frozen,lora,... WEIGHTS=random|hub|<dir> RUNTIME=auto|docker|local|inprocess DEVICE=auto|cpu|cuda:N ENGINE=auto|torch|compile|onnx EPOCHS SEED PRESET]; lists are comma-separated"
	@echo "make bench ... TASK=roi-linear|roi-knn  GPFM's ROI tasks on an ROI card (DATASET=roi-sample; docs/gpfm.md)"
	@echo "make bench ... TASK=wsi-abmil|wsi-survival  GPFM's slide tasks on a slide card (DATASET=slides-sample; docs/gpfm.md)"
	@echo "make distill [OUT=runs/distill DISTILL_ARGS=..]  distil served phikon + uni into a tiny student (resumable; docs/gpfm.md)"
	@echo "make sweep GRID=grid.yaml [EXECUTOR=ray]  a grid of runs (docs/sweeps.md)"
	@echo "make report                     leaderboard, figures, HTML page (report/report.html) from results/"
	@echo "make test                       the fast tier (about 8 min on 2 cores with TEST_WORKERS=2, one real served row included)"
	@echo "make test-all                   every test: slow, docker (needs a daemon and 'make images'), ray"
	@echo "make test-ci                    what CI runs: the fast tier, then the docker and ray tiers (not the slow one)"
	@echo "make lint                       ruff and mypy (configured in pyproject.toml), and the import-cycle check"
	@echo "make perf [GPU=1]               served (shm, gRPC, HTTP, docker) vs in-process throughput, feature-cache epoch speed-up, streaming RSS (JSON in .perf/)"
	@echo "make gpu-check [DEVICE=cuda:N]  the GPU figures in one run (~8 min): img/s + MFU eager vs compile, served/in-process, a frozen row with GPU busy, a LoRA step; then the gpu-marked tests"
	@echo "make perf-slides                tiling and slide-feature tiles/s, and the harness's peak RSS against slide size (slides-sample)"
	@echo "make perf-zoo [DEVICE=cuda BATCH=64]  forward cost of every model: params, tokens, GFLOPs, img/s, MFU"
	@echo "make perf-train [DEVICE=cuda SIZE=512 BATCH=8]  trainable params, s/step, peak memory per strategy (phikon, uni)"
	@echo "make images                     build pfmbench/base and every model image, network off (docs/docker.md)"
	@echo "make publish REGISTRY=ghcr.io/you  push the built images and write models/images.lock (what .github/workflows/release.yml runs)"
	@echo "make verify-images              check the local images against models/images.lock: digest and content manifest"
	@echo "make lock                       rewrite requirements.lock from the current venv"

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(BIN)/.installed

# on a GPU machine: onnxruntime-gpu instead of the CPU wheel (--engine onnx on CUDA/TensorRT; docs/gpu.md)
setup-gpu: setup
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-gpu.lock

bench: setup
	$(BIN)/pfmbench bench --model $(MODEL) --dataset $(DATASET) --task $(TASK) --strategy $(STRATEGY) \
	  --weights $(WEIGHTS) --runtime $(RUNTIME) --seed $(SEED) $(if $(PRESET),--preset $(PRESET)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(DEVICE),--device $(DEVICE)) $(if $(ENGINE),--engine $(ENGINE))

distill: setup
	$(BIN)/pfmbench distill run --out $(OUT) --weights $(WEIGHTS) --runtime $(RUNTIME) $(DISTILL_ARGS)

sweep: setup
	$(BIN)/pfmbench sweep $(GRID) --executor $(or $(EXECUTOR),local)

report: setup
	$(BIN)/pfmbench report --out report

test: setup
	$(BIN)/python -m pytest -m "$(FAST)" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "$(FAST)" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "not ($(FAST))" $(PYTEST_ARGS)

# CI (.ci/run): the fast tier, then the docker and ray tiers; the slow tier (about 45 min on 2 cores)
# would take CI past its time limit, so it runs in test-all, before each stop
test-ci: setup
	$(BIN)/python -m pytest -m "$(FAST)" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "(docker or ray or gpu) and not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check harness tests tools
	$(BIN)/mypy
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/python tools/import_graph.py

perf: setup
ifdef GPU
	$(BIN)/pfmbench perf --gpu --out .perf/perf-gpu.json
else
	$(BIN)/pfmbench perf --models phikon --modes inprocess,shm,grpc,http,docker,onnx --iters 2 --stream-images 128 --out .perf/perf.json
	$(BIN)/pfmbench perf --models uni --modes inprocess,shm --iters 1 --no-cache-epoch --stream-images 0 --out .perf/perf-vitl.json
endif

# the figures first (the JSON is written after every cell), then the tests only a GPU can run
gpu-check: setup
	$(BIN)/pfmbench gpu-check --device $(or $(DEVICE),cuda) --out .perf/gpu-check.json
	$(BIN)/python -m pytest -m gpu -q $(PYTEST_ARGS) tests/test_gpu.py

perf-slides: setup
	$(BIN)/pfmbench slides-perf --out .perf/slides.json

perf-zoo: setup
	$(BIN)/pfmbench zoo-perf --device $(or $(DEVICE),cpu) --batch $(or $(BATCH),1) --iters 3 --out .perf/zoo-$(or $(DEVICE),cpu).json

perf-train: setup
	$(BIN)/pfmbench train-perf --models $(or $(MODELS),phikon,uni) --device $(or $(DEVICE),cpu) --size $(or $(SIZE),224) --batch $(or $(BATCH),8) --out .perf/train-$(or $(DEVICE),cpu).json

images: setup
	$(BIN)/pfmbench images build

publish: setup
	$(BIN)/pfmbench images publish --registry $(or $(REGISTRY),$(error set REGISTRY=host/namespace))

verify-images: setup
	$(BIN)/pfmbench images verify

base-offline:
	models/_base/offline-base.sh local/debian:bookworm

lock:
	{ sed -n '1,5p' requirements.lock; $(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pfmbench\|^pip=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	$(BIN)/python tools/lockfile.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
