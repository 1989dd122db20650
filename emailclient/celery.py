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


# Logs and metrics of tasks (emailclient.core.requestid, emailclient.core.metrics):
# the request id travels in the message headers; a worker's metrics are served
# on METRICS_WORKER_PORT by its main process.
from celery.signals import worker_init  # noqa: E402

from emailclient.core import metrics, requestid  # noqa: E402, F401


@worker_init.connect(weak=False)
def _serve_worker_metrics(**kwargs) -> None:
    from django.conf import settings

    if settings.METRICS_ENABLED and settings.METRICS_WORKER_PORT:
        metrics.worker_metrics_serve(settings.METRICS_WORKER_PORT)
