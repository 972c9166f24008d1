# UPANets — build / test entry points.  `make help` lists the targets.
#
# Everything runs inside a pipenv virtualenv kept in ./.venv (PIPENV_VENV_IN_PROJECT),
# installed from the committed Pipfile.lock with `pipenv sync --dev`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
ARGS ?=
PYTEST_ARGS ?=

export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_YES := 1
export PIPENV_NOSPIN := 1
export PIPENV_VERBOSITY := -1
# Never install into whatever virtualenv happens to be activated in the caller's shell.
export PIPENV_IGNORE_VIRTUALENVS := 1

# `pipenv` if it is on PATH, otherwise the module installed by `pip install --user pipenv`
# (~/.local/bin is often not on PATH).  Evaluated when a recipe runs, i.e. after setup.
PIPENV = $(shell command -v pipenv 2>/dev/null || echo "$(PYTHON) -m pipenv")

VENV  := .venv
STAMP := $(VENV)/.synced

.PHONY: help setup train run shell test test-fast lock bench figures clean distclean

help: ## list targets
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## install pipenv if needed and sync ./.venv with Pipfile.lock (no-op when up to date)

$(STAMP): Pipfile.lock
	@if ! command -v pipenv >/dev/null 2>&1 && ! $(PYTHON) -m pipenv --version >/dev/null 2>&1; then \
	  echo "make setup: installing pipenv"; \
	  $(PYTHON) -m pip install --user pipenv \
	    || $(PYTHON) -m pip install pipenv \
	    || $(PYTHON) -m pip install --user --break-system-packages pipenv; \
	fi
	$(PIPENV) sync --dev
	@touch $@

train: setup ## train: make train ARGS="--dataset cifar10 ..."
	$(VENV)/bin/python main.py $(ARGS)

run: setup ## run any script inside the environment: make run ARGS="predict.py --weights best.pth img.png"
	$(VENV)/bin/python $(ARGS)

shell: setup ## a bash shell inside the environment (its python has torch; `exit` leaves it)
	@echo "make shell: $(VENV) is active; type exit to leave"
	@# Activated after the user's ~/.bashrc, which may put another python (pyenv's, say) first on PATH.
	@exec bash --rcfile <(printf '[ -f ~/.bashrc ] && . ~/.bashrc\n. %s/bin/activate\n' "$(CURDIR)/$(VENV)") -i

test: setup ## run the test suite (extra pytest flags: PYTEST_ARGS="-k model")
	@rc=0; $(PIPENV) run python -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5) -- failing" >&2; fi; \
	exit $$rc

test-fast: setup ## the unit tests (tests/ but tests/e2e), a couple of minutes: the edit loop's check
	@$(PIPENV) run python -m pytest -q --ignore=tests/e2e $(PYTEST_ARGS)

lock: ## regenerate Pipfile.lock from Pipfile (scripts/lock.sh)
	bash scripts/lock.sh

bench: setup ## run benchmarks/benchmark.py (ARGS passed through)
	$(VENV)/bin/python benchmarks/benchmark.py $(ARGS)

figures: setup ## redraw materials/upanets_architecture.png
	$(VENV)/bin/python materials/draw_architecture.py $(ARGS)

clean: ## remove caches and build artifacts (keeps .venv, data, checkpoints, results)
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .pytest_cache \) -print0 | xargs -0r rm -rf
	find . -path ./$(VENV) -prune -o -type f -name '*.py[co]' -print0 | xargs -0r rm -f
	rm -rf build dist *.egg-info .eggs benchmarks/out

distclean: clean ## clean + remove the ./.venv virtualenv
	rm -rf $(VENV)
