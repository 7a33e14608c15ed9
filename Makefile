# trtq: two commands do all set-up on a fresh machine:
#   make demo   install into .venv if needed, then run the main job (export, calibrate, quantize, build, accuracy)
#   make test   install into .venv if needed, then type-check and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRTQ := $(VENV)/bin/trtq
STAMP := $(VENV)/.trtq-installed-2
# TensorRT type stubs live outside the venv, where only the type checker looks (pyrightconfig stubPath):
# inside it, `import tensorrt` would succeed as an empty package and fool Polygraphy and trtq.
STUBS := .typings
SHARED ?= ../shared/assets
PYTEST_ARGS ?=

.PHONY: install demo test unit typecheck lint bench bench-calib bench-cpu-int8 bench-accuracy bench-models bench-qat bench-pipeline bench-deploy clean help

help:
	@echo "make demo | make test | make bench | make bench-calib | make bench-cpu-int8 | make bench-accuracy | make bench-models | make bench-qat | make bench-pipeline | make bench-deploy | make typecheck | make lint"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[export,dev]'
	@# tensorrt-stubs declares a dependency on the real tensorrt wheel: type stubs only, without it,
	@# into $(STUBS) (not the venv; an older install's copy in the venv is removed).
	-$(PY) -m pip uninstall -q -y tensorrt-stubs 2>/dev/null
	rm -rf $(STUBS)
	$(PY) -m pip install -q --no-deps --target $(STUBS) 'tensorrt-stubs==10.13.0.35.1'
	@touch $(STAMP)

demo: $(STAMP)
	YOLO_OFFLINE=1 $(PY) -m trtq.demo --shared $(SHARED)

test: $(STAMP) typecheck
	YOLO_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	YOLO_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(VENV)/bin/basedpyright --pythonpath $(PY) -p pyrightconfig.json

lint: $(STAMP)
	$(VENV)/bin/ruff check trtq calibrators tests benchmarks examples

bench: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/speed.py --shared $(SHARED)

bench-calib: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/calibration.py --shared $(SHARED)

bench-cpu-int8: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/cpu_int8.py --shared $(SHARED)

bench-accuracy: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/accuracy.py --shared $(SHARED)

bench-models: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/models.py --shared $(SHARED)

# Ultralytics' own QAT row needs nvidia-modelopt and huggingface_hub in the venv (not trtq dependencies).
bench-qat: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/qat.py --shared $(SHARED)

bench-pipeline: $(STAMP)
	YOLO_OFFLINE=1 $(PY) benchmarks/pipeline.py --shared $(SHARED)

bench-deploy: $(STAMP)
	YOLO_OFFLINE=1 PYTHONPATH=. $(PY) -m benchmarks.deploy --shared $(SHARED)

clean:
	rm -rf build *.egg-info .pytest_cache
