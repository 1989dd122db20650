import os

from celery import Celery
from celery.signals import worker_init

# Production unless told otherwise, as manage.py and WSGI (see manage.py).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emailclient.settings.production")

# Every task checks, once per process, that the database isolates tenants.
app = Celery("emailclient", task_cls="emailclient.core.tasking:IsolatedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _worker_priority(**kwargs):
    """Background work yields the CPU to the requests (CELERY_WORKER_NICE)."""
    from emailclient.core.tasking import worker_priority_lower  # Django is set up by now

    worker_priority_lower()
