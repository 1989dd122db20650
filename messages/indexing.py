"""The full-text index: fills `Message.search_vector` after the sync.

The sync stores rows with a NULL vector (to_tsvector is most of an insert's
cost); `search_index_pending()` computes them in small transactions, newest
rows first. A partial index on the NULL rows keeps finding them cheap. Two
indexers never fight over rows: each locks its batch with SKIP LOCKED.
"""

import uuid

from django.db.models import Subquery

from emailclient.core.tenancy import tenant_scope

from .models import SEARCH_VECTOR, Message

BATCH_SIZE = 500


def search_index_pending(*, tenant_id: uuid.UUID, batch_size: int = BATCH_SIZE) -> int:
    """Index every message of the tenant still without a vector; returns how many."""
    total = 0
    while True:
        with tenant_scope(tenant_id):
            pending = (
                Message.objects.filter(tenant_id=tenant_id, search_vector__isnull=True)
                .select_for_update(skip_locked=True)
                .values("id")[:batch_size]
            )
            done = Message.objects.filter(id__in=Subquery(pending)).update(search_vector=SEARCH_VECTOR)
        total += done
        if done < batch_size:
            return total
