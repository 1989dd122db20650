#!/usr/bin/env bash
# Container entrypoint: the first argument picks the role, the rest is passed
# on to the program. Each role execs, so the program gets signals directly.
#
#   web      gunicorn (settings in deploy/gunicorn.conf.py)
#   worker   Celery worker
#   beat     Celery beat with the database scheduler; run exactly one
#   migrate  setupdb (only when DATABASE_SUPERUSER_URL is set), then
#            migrate --database owner; one-shot
#   manage   any manage.py command, e.g. `manage createtenant ...`
set -euo pipefail

# Work from the project root (/app in the image) so that manage.py and the
# `emailclient` package resolve wherever this script is run from.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The image sets the production settings; said here too, so that a run that
# replaces the environment still gets them (manage.py and Celery default to
# production as well; the development settings are only ever chosen by name).
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-emailclient.settings.production}"

usage() {
    echo "usage: entrypoint.sh {web|worker|beat|migrate|manage} [args...]" >&2
}

if [[ $# -eq 0 ]]; then
    usage
    exit 64
fi
role=$1
shift

case "$role" in
    web)
        exec gunicorn --config deploy/gunicorn.conf.py "$@" emailclient.wsgi:application
        ;;
    worker)
        exec celery -A emailclient worker --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    beat)
        exec celery -A emailclient beat --loglevel "${LOG_LEVEL:-INFO}" \
            --scheduler django_celery_beat.schedulers:DatabaseScheduler "$@"
        ;;
    migrate)
        # settings/base.py has a default superuser URL for development; here
        # setupdb runs only when the deployment asks for it explicitly.
        if [[ -n "${DATABASE_SUPERUSER_URL:-}" ]]; then
            python manage.py setupdb
        else
            echo "DATABASE_SUPERUSER_URL not set: skipping setupdb (database and roles must exist)" >&2
        fi
        exec python manage.py migrate --database owner --noinput "$@"
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    *)
        echo "unknown role: $role" >&2
        usage
        exit 64
        ;;
esac
