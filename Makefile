# voicebot: `make run` to try it, `make test` to check it. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint call superuser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

# Development server on the embedded defaults: SQLite, in-memory channel layer, no accounts.
run: export DJANGO_DEBUG ?= true
run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@$(BIN)/python manage.py run_banner --host $(HOST) --port $(PORT)
	$(BIN)/daphne -b $(HOST) -p $(PORT) voicebot.asgi:application

# A simulated phone call against the server `make run` started.
call: export DJANGO_DEBUG ?= true
call: $(VENV)/.runtime-installed
	$(BIN)/python manage.py simulate_call --server http://$(HOST):$(PORT) $(ARGS)

# A staff login for the admin and the live view, on the same defaults as `make run`.
superuser: export DJANGO_DEBUG ?= true
superuser: $(VENV)/.runtime-installed
	$(BIN)/python manage.py createsuperuser

# Ruff, then the import rules in pyproject.toml ([tool.importlinter]): which package may
# import which (voicebot -> calls -> agents -> callmedia; no Django in callmedia or peers;
# nothing imports tests; the apps do not import the bench).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Tests in parallel, one xdist worker per core by default (TEST_WORKERS=0 runs them in one
# process); ARGS="-m 'not realtime'" skips the tests that wait on audio played in real time.
TEST_WORKERS ?= auto
test: $(VENV)/.dev-installed lint
	$(BIN)/pytest -n $(TEST_WORKERS) $(ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.relay $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
