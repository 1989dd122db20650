# Two commands on a fresh machine: `make run` and `make test` (see README).
.PHONY: run test lint format migrate shell

run:  ## install, create the database, migrate, seed the demo, run web + worker + beat
	scripts/run.sh

test:  ## lint, migration check and the whole test suite (real PostgreSQL and Redis)
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

migrate:
	DJANGO_SETTINGS_MODULE="$${DJANGO_SETTINGS_MODULE:-emailclient.settings.local}" .venv/bin/python manage.py migrate --database owner

shell:
	DJANGO_SETTINGS_MODULE="$${DJANGO_SETTINGS_MODULE:-emailclient.settings.local}" .venv/bin/python manage.py shell
