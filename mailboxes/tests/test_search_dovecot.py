"""Our search against Dovecot's own SEARCH on the same mailbox.

Operators with an IMAP equivalent must select exactly the messages the
server selects. Words are stemmed full-text matches on our side and
substring matches on the server's, so for words chosen to have no other
stemmed forms in the corpus we check ours is within the server's."""

import datetime

import pytest

from accounts.selectors import account_list
from emailclient.core.models import TenantMembership
from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import account_sync
from mailboxes.tests.test_imap_sync import seed
from messages.indexing import search_index_pending
from messages.search import apply_search, parse_search_query
from messages.selectors import message_list
from messages.tests.corpus import corpus_files

pytestmark = pytest.mark.django_db

MAIL = corpus_files("notmuch", "default", "cur")

# (our query, the IMAP SEARCH criteria) that must select the same messages.
EXACT = [
    ("from:cworth", ["FROM", "cworth"]),
    ("from:Keith", ["FROM", "Keith"]),
    ("-from:cworth", ["NOT", "FROM", "cworth"]),
    ("subject:maildir", ["SUBJECT", "maildir"]),
    ('subject:"[PATCH]"', ["SUBJECT", "[PATCH]"]),
    ("to:notmuch@notmuchmail.org", ["TO", "notmuch@notmuchmail.org"]),
    ("cc:cworth", ["CC", "cworth"]),
    ("is:unread", ["UNSEEN"]),
    ("is:read", ["SEEN"]),
    ("is:flagged", ["FLAGGED"]),
    ("-is:flagged from:carl", ["UNFLAGGED", "FROM", "carl"]),
    ("is:unread subject:notmuch", ["UNSEEN", "SUBJECT", "notmuch"]),
]
WORDS = [
    ("emacs", ["TEXT", "emacs"]),
    ("maildir", ["TEXT", "maildir"]),
    ('"working with maildir"', ["TEXT", "working with maildir"]),
]


@pytest.fixture
def searchable(imap_account, mailbox, user_a, tenant_a):
    seed(mailbox, {"INBOX": MAIL})
    account_sync(tenant_id=imap_account.tenant_id, account_id=imap_account.id)
    search_index_pending(tenant_id=imap_account.tenant_id)
    mailbox.select_folder("INBOX", readonly=True)
    with tenant_scope(tenant_a.id):
        membership = TenantMembership.objects.get(tenant=tenant_a, user=user_a)
        assert account_list(tenant=tenant_a, membership=membership).filter(id=imap_account.id).exists()
    return tenant_a, membership


def ours(searchable, query: str) -> set[int]:
    tenant, membership = searchable
    with tenant_scope(tenant.id):
        messages = apply_search(message_list(tenant=tenant, membership=membership), parse_search_query(query))
        return set(messages.values_list("imap_uid", flat=True))


@pytest.mark.parametrize(("query", "criteria"), EXACT, ids=[q for q, _ in EXACT])
def test_operators_select_what_the_server_selects(searchable, mailbox, query, criteria):
    server = set(mailbox.search(criteria))
    assert ours(searchable, query) == server


@pytest.mark.parametrize(("query", "criteria"), WORDS, ids=[q for q, _ in WORDS])
def test_words_find_what_the_server_finds(searchable, mailbox, query, criteria):
    server = set(mailbox.search(criteria))
    found = ours(searchable, query)
    assert found, "the word must occur in the corpus"
    assert found <= server


def test_dates_select_what_the_server_selects(searchable, mailbox):
    # Dovecot compares INTERNALDATE by day in the server's zone; ours are UTC days.
    # APPEND without a date gives every message today's date: both sides agree on it.
    today = datetime.datetime.now(datetime.UTC).date()
    tomorrow = today + datetime.timedelta(days=1)
    assert ours(searchable, f"after:{today}") == set(mailbox.search(["SINCE", today]))
    assert ours(searchable, f"before:{tomorrow}") == set(mailbox.search(["BEFORE", tomorrow]))
    assert ours(searchable, f"before:{today}") == set(mailbox.search(["BEFORE", today])) == set()
