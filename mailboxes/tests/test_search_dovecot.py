"""Our search against Dovecot's own SEARCH on the same mailbox.

Operators with an IMAP equivalent must select exactly the messages the
server selects. Words must too: the mailbox holds plain, HTML-only and
entity-rich mail, and where the two legitimately differ (Dovecot's TEXT is a
substring match over every header and the undecoded HTML; ours is English
full text over subject, sender and the text of the body) the difference is
named, message by message, in EXPECTED_DIFFERENCES."""

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
from messages.tests.corpus import CORPUS_DIR, corpus_files

pytestmark = pytest.mark.django_db

MAIL = corpus_files("notmuch", "default", "cur")
# HTML-only mail, with entities (&ouml; &uuml; &szlig; ...), a quoted ">" in
# an attribute, a script and a style.
HTML_ONLY = [
    CORPUS_DIR / "mime-parser-cases" / "legacy" / "039.eml",
    CORPUS_DIR / "notmuch" / "html" / "attribute-text",
    CORPUS_DIR / "torture" / "enmime-html-only-inline.raw",
    CORPUS_DIR / "torture" / "enmime-non-mime-html.raw",
]
ENTITIES = (
    b"From: Chef <chef@example.com>\r\nTo: notmuch@notmuchmail.org\r\nSubject: Dessert menu\r\n"
    b"Message-ID: <dessert@example.com>\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n"
    b"<html><head><style>.zebracss { color: red }</style></head><body>"
    b"<p>Cr&egrave;me br&ucirc;l&eacute;e &amp; marzipan&nbsp;tart</p>"
    b"<script>var quokka = 1;</script><div>Served&#32;daily</div></body></html>\r\n"
)

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
    ("hunter2", ["TEXT", "hunter2"]),
    ("mailing", ["TEXT", "mailing"]),
    ("marzipan", ["TEXT", "marzipan"]),
    ("brûlée", ["TEXT", "brûlée"]),
    ("Frösche", ["TEXT", "Frösche"]),
    ("swordfish", ["TEXT", "swordfish"]),
    ("quokka", ["TEXT", "quokka"]),
    ("zebracss", ["TEXT", "zebracss"]),
]
# Each message by the name of its file, in the order the mailbox gets them:
# its UID is its place in this list, plus one.
NAMES = [*(p.name for p in MAIL), *(p.name for p in HTML_ONLY), "ENTITIES"]
HTML_STEMMED = (
    "ours stems English: 'mailing' is 'mail', which these have; the server's substring is 'mailing'"
)
# query: (found only by us, found only by the server, why). Any other
# difference fails the test.
EXPECTED_DIFFERENCES = {
    "emacs": (
        set(),
        {"53:2,"},
        "the word is only in a User-Agent header: TEXT reads every header, we do not",
    ),
    "mailing": ({"32:2,", "41:2,", "42:2,", "43:2,", "46:2,", "47:2,"}, set(), HTML_STEMMED),
    "brûlée": ({"ENTITIES"}, set(), "written br&ucirc;l&eacute;e: the server does not decode HTML entities"),
    "Frösche": ({"039.eml"}, set(), "written Fr&ouml;sche: the server does not decode HTML entities"),
    "swordfish": (set(), {"attribute-text"}, "only in an attribute value: no text of the page"),
    "quokka": (set(), {"ENTITIES"}, "only in a <script>: never shown"),
    "zebracss": (set(), {"ENTITIES"}, "only in a <style>: never shown"),
}


@pytest.fixture
def searchable(imap_account, mailbox, user_a, tenant_a):
    seed(mailbox, {"INBOX": MAIL})
    for path in HTML_ONLY:
        mailbox.append("INBOX", path.read_bytes())
    mailbox.append("INBOX", ENTITIES)
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
    server = {NAMES[uid - 1] for uid in mailbox.search(criteria, charset="UTF-8")}
    found = {NAMES[uid - 1] for uid in ours(searchable, query)}
    assert found | server, "the word must occur in the mailbox"
    only_ours, only_server, _why = EXPECTED_DIFFERENCES.get(query, (set(), set(), ""))
    assert (found - server, server - found) == (only_ours, only_server)


def test_dates_select_what_the_server_selects(searchable, mailbox):
    # Dovecot compares INTERNALDATE by day in the server's zone; ours are UTC days.
    # APPEND without a date gives every message today's date: both sides agree on it.
    today = datetime.datetime.now(datetime.UTC).date()
    tomorrow = today + datetime.timedelta(days=1)
    assert ours(searchable, f"after:{today}") == set(mailbox.search(["SINCE", today]))
    assert ours(searchable, f"before:{tomorrow}") == set(mailbox.search(["BEFORE", tomorrow]))
    assert ours(searchable, f"before:{today}") == set(mailbox.search(["BEFORE", today])) == set()
