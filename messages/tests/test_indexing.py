from django.contrib.postgres.search import SearchQuery

from emailclient.core.tenancy import tenant_scope
from messages.indexing import search_index_pending
from messages.models import Message
from messages.tests.factories import MessageFactory


def test_index_fills_vectors_of_new_messages_only_in_its_tenant(db, tenant_a, tenant_b):
    mine = MessageFactory(
        folder__account__tenant=tenant_a, subject="Quarterly invoice", text_body="payment overdue"
    )
    theirs = MessageFactory(folder__account__tenant=tenant_b, subject="Quarterly invoice")

    assert search_index_pending(tenant_id=tenant_a.id) == 1

    with tenant_scope(tenant_a.id):
        found = Message.objects.filter(search_vector=SearchQuery("invoices", config="english"))
        assert list(found.values_list("id", flat=True)) == [mine.id]
        assert Message.objects.filter(search_vector=SearchQuery("overdue", config="english")).exists()
    with tenant_scope(tenant_b.id):
        assert Message.objects.get(id=theirs.id).search_vector is None
    # Nothing left to do: a second run touches no row.
    assert search_index_pending(tenant_id=tenant_a.id) == 0


def test_index_works_through_batches(db, tenant_a):
    MessageFactory.create_batch(7, folder__account__tenant=tenant_a)

    assert search_index_pending(tenant_id=tenant_a.id, batch_size=3) == 7
    with tenant_scope(tenant_a.id):
        assert not Message.objects.filter(search_vector__isnull=True).exists()


def test_search_vectors_are_kept_in_the_row(db):
    """A phrase search tests vectors row by row; out of line, each test read
    the TOAST table too (migration 0011, bench/read_bench.py)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attstorage FROM pg_attribute"
            " WHERE attrelid = 'email_messages'::regclass AND attname = 'search_vector'"
        )
        assert cursor.fetchone() == ("m",)
