"""Celery tasks of the mail store: JSON arguments, ids only. Names are the
module path."""

import logging
import uuid

from celery import shared_task

from .blob_gc import blob_garbage_collect
from .blobs import default_store
from .indexing import search_index_pending

logger = logging.getLogger(__name__)


@shared_task(name="messages.tasks.index_search", acks_late=True, ignore_result=True)
def search_index_task(tenant_id: str) -> int:
    return search_index_pending(tenant_id=uuid.UUID(tenant_id))


@shared_task(name="messages.tasks.gc_blobs", ignore_result=False)
def blob_gc_task(min_age_hours: float = 24.0) -> dict:
    """`manage.py gcblobs` for a schedule: give `messages.tasks.gc_blobs` a periodic
    task in the admin (django-celery-beat). A run killed by the time limit
    leaves nothing lost (the next one puts set-aside blobs back)."""
    # A periodic task's kwargs are JSON typed in the admin: "24" is 24.
    report = blob_garbage_collect(store=default_store(), min_age=float(min_age_hours) * 3600)
    logger.info("blob garbage collection: %s", report)
    return report.as_dict()
