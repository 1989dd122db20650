#!/usr/bin/env bash
# `make run`: everything a newcomer needs, then web + Celery worker + beat in
# the foreground. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
scripts/venv.sh

if [ ! -f .env ]; then
    printf '==> writing .env with fresh development secrets\n'
    .venv/bin/python - <<'PY' > .env
import secrets
from cryptography.fernet import Fernet
print("# Local development settings, written by scripts/run.sh. Not for production.")
print(f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}")
print(f"JWT_SIGNING_KEY={secrets.token_urlsafe(64)}")
print(f"CREDENTIAL_ENCRYPTION_KEYS={Fernet.generate_key().decode()}")
print("DATABASE_URL=postgres://emailclient_app@127.0.0.1:5432/emailclient")
print("DATABASE_OWNER_URL=postgres://emailclient_owner@127.0.0.1:5432/emailclient")
print("DATABASE_ADMIN_URL=postgres://emailclient_admin@127.0.0.1:5432/emailclient")
print("REDIS_URL=redis://127.0.0.1:6379/0")
PY
fi

export DJANGO_SETTINGS_MODULE=emailclient.settings.local
manage() { .venv/bin/python manage.py "$@"; }
manage setupdb
manage migrate --database owner --no-input -v 0
manage seeddemo

# A local Dovecot (IMAP 10143, POP3 10110, IMAPS 10993, POP3S 10995) with
# the demo user, its mailbox filled from the corpus; its private CA is trusted.
# Sending: a submission server on 10587 (deploy/devmail/devsubmission.py,
# STARTTLS + AUTH as demo) delivers mail for demo@<any domain> to the demo
# INBOX and keeps everything else in var/devmail/caught, never relayed.
DEVMAIL_DIR="$PWD/var/devmail"
export DEVMAIL_IMAP_PORT="${DEVMAIL_IMAP_PORT:-10143}"
export DEVMAIL_SUBMISSION_PORT="${DEVMAIL_SUBMISSION_PORT:-10587}"
deploy/devmail/devmail.sh start "$DEVMAIL_DIR"
deploy/devmail/devmail.sh adduser "$DEVMAIL_DIR" demo "${DEMO_PASSWORD:-demo}"
export MAIL_TLS_CA_FILE="$DEVMAIL_DIR/tls/ca.pem"

PORT="${PORT:-8000}"
# Job control: each process (and its children, e.g. runserver's reloader)
# gets its own process group, which cleanup stops as a whole.
set -m
pids=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    deploy/devmail/devmail.sh stop "$DEVMAIL_DIR" >/dev/null 2>&1 || true
    printf '==> stopped\n'
}
trap cleanup INT TERM EXIT

.venv/bin/python deploy/devmail/devsubmission.py "$DEVMAIL_DIR" --port "$DEVMAIL_SUBMISSION_PORT" & pids+=($!)
.venv/bin/python manage.py runserver "127.0.0.1:$PORT" & pids+=($!)
.venv/bin/celery -A emailclient worker --loglevel INFO --concurrency 2 & pids+=($!)
.venv/bin/celery -A emailclient beat --loglevel INFO \
    --scheduler django_celery_beat.schedulers:DatabaseScheduler --pidfile= & pids+=($!)

# Queued now, synced by the worker as soon as it is up.
manage seeddemomail --imap-port "$DEVMAIL_IMAP_PORT" --smtp-port "$DEVMAIL_SUBMISSION_PORT"

printf '\n==> API on http://127.0.0.1:%s/api/  (docs: /api/docs/, admin: /admin/)\n' "$PORT"
printf '==> demo@localhost sends through 127.0.0.1:%s (caught mail: var/devmail/caught)\n' "$DEVMAIL_SUBMISSION_PORT"
printf '==> Ctrl-C stops the web server, the worker, beat and the submission server.\n\n'
wait -n
