#!/usr/bin/env bash
# `make test`: lint, migration check, then the whole suite against the real
# PostgreSQL and Redis. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
scripts/venv.sh

export DJANGO_SETTINGS_MODULE=emailclient.settings.test
printf '==> ruff\n'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
printf '==> import contracts (.importlinter)\n'
.venv/bin/lint-imports
# The files, plugins and strict modules are in mypy.ini; .mypy_cache keeps
# a run without changes to a few seconds.
printf '==> mypy (mypy.ini)\n'
.venv/bin/mypy
printf '==> makemigrations --check\n'
.venv/bin/python manage.py makemigrations --check --dry-run --no-input -v 1 2>/dev/null
printf '==> pytest\n'
exec .venv/bin/pytest "$@"
