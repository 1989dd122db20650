"""Health probe of the beat container: healthy while Celery beat keeps
recording its runs.

beat serves nothing to ask, and a beat that hangs (a lost database
connection, a stuck scheduler) stays a running process. django-celery-beat's
DatabaseScheduler writes each entry's `last_run_at` back to the database at
least every 3 minutes, and `compose-dispatch-due` runs every minute: so the
newest `last_run_at` of the enabled periodic tasks is at most about four
minutes old while beat works. Healthy if it is younger than
BEAT_HEALTH_MAX_AGE seconds (600). Reads DATABASE_URL as the runtime role;
prints one line, exit status 0 or 1.
"""

import os
import sys

import psycopg

QUERY = (
    "SELECT extract(epoch FROM now() - max(last_run_at)) FROM django_celery_beat_periodictask WHERE enabled"
)


def main() -> int:
    max_age = float(os.environ.get("BEAT_HEALTH_MAX_AGE") or 600)
    try:
        with psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=5) as conn:
            (age,) = conn.execute(QUERY).fetchone() or (None,)
    except (KeyError, psycopg.Error) as exc:
        print(f"unhealthy: database not readable ({type(exc).__name__})")
        return 1
    if age is None:
        print("unhealthy: beat has recorded no run yet")
        return 1
    if age > max_age:
        print(f"unhealthy: the last recorded run is {age:.0f} s old (limit {max_age:.0f} s)")
        return 1
    print(f"healthy: the last recorded run is {age:.0f} s old")
    return 0


if __name__ == "__main__":
    sys.exit(main())
