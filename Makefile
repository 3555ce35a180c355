# Thin aliases over invoke. `make hef` == `invoke build --variant tiny --arch hailo8l`.
VARIANT ?= tiny
ARCH ?= hailo8l
ARGS ?=
DEST ?= vendor
VENV ?= .venv
PY := $(VENV)/bin/python
INVOKE := $(VENV)/bin/invoke

.PHONY: hef test doctor dfc-double-wheel venv clean

# The venv is made once and reused; torch is pinned to the CPU build (never a CUDA build here).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[host,export,calib,test]"
	touch $@

venv: $(VENV)/.installed

hef: venv
	$(INVOKE) build --variant $(VARIANT) --arch $(ARCH) $(ARGS)

doctor: venv
	$(INVOKE) doctor --arch $(ARCH) $(ARGS)

test: venv
	$(PY) -m pytest $(ARGS)

dfc-double-wheel: venv
	$(INVOKE) dfc-double-wheel --dest $(DEST)

clean:
	rm -rf build
