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
printf '==> makemigrations --check\n'
.venv/bin/python manage.py makemigrations --check --dry-run --no-input -v 1 2>/dev/null
printf '==> pytest\n'
exec .venv/bin/pytest "$@"
