# The two commands README.md gives: `make demo` and `make test`. Each creates .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DS_ACCELERATOR ?= cpu

.PHONY: install demo test bench clean

$(BIN)/gandist: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# Pin torch first: any looser spec may pull a multi-GB CUDA build on a CPU machine.
	$(BIN)/pip install --disable-pip-version-check -q "torch==2.13.0"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps "pytorch-fid==0.3.0"  # pyproject's parity extra
	touch $(BIN)/gandist

install: $(BIN)/gandist

demo: install
	$(BIN)/gandist train configs/demo_digits.yaml --run-dir runs/demo --force

# Two workers (the machine has two cores); tests that start a Ray cluster share one worker (xdist group "ray").
test: install
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadgroup tests

bench: install
	for b in tools/bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
