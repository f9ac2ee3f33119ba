# Two entry points: `make demo` (set up, then run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
OUT    ?= demo_output

.PHONY: demo test venv clean bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[data,test,survival]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/dmlmm demo --out $(OUT) --overwrite

test: venv
	$(PY) -m pytest tests -n 2 --dist loadscope

bench: venv
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/lmm_speed.py

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info src/*.egg-info
