# Paretoscope: `make run` starts the dashboard on the bundled demo, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501
# TF=1: also the TensorFlow extra (requirements-tf.txt: SavedModel and Keras models, the tensorflow runtime)
TF ?=
TF_STAMP := $(VENV)/.installed-tf
# RAY=1: also the Ray extra (requirements-ray.txt: one study measured across many machines)
RAY ?=
RAY_STAMP := $(VENV)/.installed-ray

.PHONY: install run run-shared dev test lint typecheck bench-overhead bench-speedups bench-repeat clean

install: $(STAMP) $(if $(TF),$(TF_STAMP)) $(if $(RAY),$(RAY_STAMP))

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel is on the machines' disk; an unpinned torch pulls CUDA
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	# Triton's own model-config protobuf checks the deploy tests' config.pbtxt: its wheel is downloaded, not
	# installed (tritonclient pins ml-dtypes<=0.5.4 and its grpc extra an older protobuf than onnx's)
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/wheels tritonclient==2.73.0
	# the project itself, editable: `python -m engine`, the `paretoscope` command and every child process import it
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

$(TF_STAMP): $(STAMP) requirements-tf.txt
	$(BIN)/pip install --quiet -r requirements-tf.txt
	touch $(TF_STAMP)

$(RAY_STAMP): $(STAMP) requirements-ray.txt
	$(BIN)/pip install --quiet -r requirements-ray.txt
	touch $(RAY_STAMP)

run: install
	# on an empty database, queue the bundled demo: the dashboard's worker runs it while you look around
	$(BIN)/python -m engine demo --if-empty
	# the worker starts with the app, not on the first page visit: the demo runs while the browser opens
	$(BIN)/python -m engine worker --background
	$(BIN)/streamlit run app.py --server.port $(PORT)

run-shared: install
	# a team's server: sign-in (needs [auth] in .streamlit/secrets.toml), owners, bounds, audit; see README
	PARETOSCOPE_SHARED=1 $(BIN)/python -m engine worker --background
	PARETOSCOPE_SHARED=1 $(BIN)/streamlit run app.py --server.port $(PORT) --server.address 0.0.0.0 \
		--client.showErrorDetails none

dev: install
	# for working on the dashboard: rerun pages when their files change (off in the shipped configuration)
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.fileWatcherType auto --server.runOnSave true

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# the suite's time is mostly child processes starting and servers waiting, not CPU: 2 pytest processes (one per
# test file at a time) take ~30% less wall time on the 2-core CI machine; TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2
test: install lint
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

bench-overhead: install
	$(BIN)/python -m benchmarks.harness_overhead

bench-speedups: install
	$(BIN)/python -m benchmarks.speedups

bench-repeat: install
	$(BIN)/python -m benchmarks.repeatability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
