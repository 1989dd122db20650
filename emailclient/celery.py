import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emailclient.settings.local")

app = Celery("emailclient")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
