#!/usr/bin/env python
import os
import sys


def main() -> None:
    # Production unless told otherwise, as for WSGI and Celery: the only
    # settings safe against real mail (no DEBUG, no private hosts, no
    # plaintext). They refuse to start without their secrets and
    # ALLOWED_HOSTS, so a forgotten variable names what is missing instead
    # of serving with development settings. `make run`, `make test`, the
    # benchmarks and the image set DJANGO_SETTINGS_MODULE themselves.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emailclient.settings.production")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
