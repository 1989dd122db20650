"""Celery tasks of the messages app: JSON arguments, ids only."""

import uuid

from celery import shared_task

from .indexing import search_index_pending


@shared_task(name="mail.index_search", acks_late=True, ignore_result=True)
def search_index_task(tenant_id: str) -> int:
    return search_index_pending(tenant_id=uuid.UUID(tenant_id))
