import os

from celery import Celery

# Production unless told otherwise, as manage.py and WSGI (see manage.py).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emailclient.settings.production")

# Every task checks, once per process, that the database isolates tenants.
app = Celery("emailclient", task_cls="emailclient.core.tasking:IsolatedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
