# Thin aliases over invoke. `make hef` == `invoke build --variant tiny --arch hailo8l --calib-download`.
VARIANT ?= tiny
ARCH ?= hailo8l
ARGS ?=
# Speech for calibration: a folder of recordings, or empty to download LibriSpeech dev-clean.
CALIB ?=
CALIB_FLAG = $(if $(CALIB),--calib $(CALIB),--calib-download)
DEST ?= vendor
VENV ?= .venv
PY := $(VENV)/bin/python
INVOKE := $(VENV)/bin/invoke

.PHONY: hef test doctor rehearsal dfc-double-wheel venv clean

# One venv, made once and reused, holding what each command needs: the host side (invoke,
# docker-py, NVML, rich) for hef/doctor -- no torch, the stages run in containers -- and
# everything for the tests. torch is pinned to the CPU build first, so nothing pulls a CUDA build.
$(VENV)/.host: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[host]"
	touch $@

$(VENV)/.test: $(VENV)/.host
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[host,export,calib,test]"
	touch $@

venv: $(VENV)/.test

# The rehearsal's host side: real tiny.en weights. Without a Docker daemon the stages run in this
# venv, so it gets the export/calibration packages too (the same as `make venv`). The DFC test
# double is never installed here: the rehearsal keeps it under build/rehearsal/.
$(VENV)/.rehearsal: $(VENV)/.host
	$(PY) -m pip install -q -e ".[host,rehearsal]"
	@docker info >/dev/null 2>&1 || { echo "no Docker daemon answers: installing the export/calibration packages for a native rehearsal"; \
	  $(PY) -m pip install -q "torch==2.13.0" && $(PY) -m pip install -q -e ".[host,export,calib,rehearsal]"; }
	touch $@

hef: $(VENV)/.host
	$(INVOKE) build --variant $(VARIANT) --arch $(ARCH) $(CALIB_FLAG) $(ARGS)

doctor: $(VENV)/.host
	$(INVOKE) doctor --arch $(ARCH) $(ARGS)

# The whole pipeline offline with the DFC test double (NOT DEPLOYABLE), into build/rehearsal/.
rehearsal: $(VENV)/.rehearsal
	$(INVOKE) rehearsal $(ARGS)

test: $(VENV)/.test
	$(PY) -m pytest $(ARGS)

dfc-double-wheel: $(VENV)/.host
	$(INVOKE) dfc-double-wheel --dest $(DEST)

clean:
	rm -rf build
