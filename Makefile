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

# Operations (issue 16). health, db-backup and db-restore act on the setup of `make run`
# (local settings, unless DJANGO_SETTINGS_MODULE says otherwise); up/down/logs on the compose stack.
.PHONY: health db-backup db-restore up down logs dev-up
health:  ## GET /health of the running service (PORT, default 8000): 200 and the checks, or why not
	PORT="$${PORT:-8000}" .venv/bin/python deploy/healthcheck.py

db-backup:  ## one archive (database, blobs, manifest) into var/backups/, or FILE=path
	mkdir -p var/backups && DJANGO_SETTINGS_MODULE="$${DJANGO_SETTINGS_MODULE:-emailclient.settings.local}" .venv/bin/python manage.py backup "$${FILE:-var/backups/email-$$(date -u +%Y%m%dT%H%M%SZ).backup}"

db-restore:  ## restore FILE=path into an empty database and blob folder
	@test -n "$(FILE)" || { echo "usage: make db-restore FILE=var/backups/..."; exit 2; }; DJANGO_SETTINGS_MODULE="$${DJANGO_SETTINGS_MODULE:-emailclient.settings.local}" .venv/bin/python manage.py restore "$(FILE)"

up:  ## the production stack (docker-compose.yml; .env from deploy/env.example), built and started
	docker compose -f docker-compose.yml up -d --build

down:  ## stop and remove the stack's containers (volumes are kept)
	docker compose -f docker-compose.yml down

logs:  ## follow the stack's logs (SERVICE=web for one service)
	docker compose -f docker-compose.yml logs -f --tail=200 $(SERVICE)

dev-up:  ## the development services in compose: runserver with the code mounted, a worker, Mailpit
	docker compose --profile dev up -d --build devserver devworker mailpit
