import contextlib
import datetime
import uuid

import pytest
from django.db import DataError, OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from emailclient.core.exceptions import ApplicationError
from emailclient.core.tenancy import tenant_scope
from messages import selectors
from messages.indexing import search_index_pending
from messages.models import Message
from messages.search import (
    MAX_QUERY_LENGTH,
    MAX_TERMS,
    PHRASE,
    WORD,
    SearchQuery,
    SearchQueryError,
    Term,
    apply_search,
    parse_search_query,
    positive_conditions,
    search_filter,
)
from messages.tests.factories import FolderFactory, MessageFactory

UTC = datetime.UTC


def terms(text):
    return list(parse_search_query(text).terms)


def error_of(text) -> str:
    with pytest.raises(SearchQueryError) as info:
        parse_search_query(text)
    return str(info.value)


# --- Parsing ----------------------------------------------------------------------


def test_words_and_phrases():
    assert terms('invoice  "quarterly report"\tpaid') == [
        Term(WORD, "invoice"),
        Term(PHRASE, "quarterly report"),
        Term(WORD, "paid"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from:bob", Term("from", "bob")),
        ("FROM:Bob@Example.com", Term("from", "Bob@Example.com")),
        ('to:"Rita Reader"', Term("to", "Rita Reader")),
        ("cc:carol", Term("cc", "carol")),
        ('subject:"quarterly report"', Term("subject", "quarterly report")),
        ("subject:a:b", Term("subject", "a:b")),
        ("has:attachment", Term("has", "attachment")),
        ("has:Attachments", Term("has", "attachment")),
        ("is:unread", Term("is", "unread")),
        ("is:READ", Term("is", "read")),
        ("is:flagged", Term("is", "flagged")),
        ("is:starred", Term("is", "flagged")),
        ("in:INBOX", Term("in", "inbox")),
        ("in:Trash", Term("in", "trash")),
        ("in:custom", Term("in", "custom")),  # not a special type: a folder name
        ("in:Projects", Term("in", "Projects")),
        ('in:"Project X"', Term("in", "Project X")),
        ("before:2024-03-01", Term("before", datetime.date(2024, 3, 1))),
        ("after:2024-02-29", Term("after", datetime.date(2024, 2, 29))),
        ("account:Me@Work.example", Term("account", "Me@Work.example")),
        (
            "account:6F1C3A1E-0000-4000-8000-00000000000A",
            Term("account", uuid.UUID("6f1c3a1e-0000-4000-8000-00000000000a")),
        ),
    ],
)
def test_operators(text, expected):
    assert terms(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-word", Term(WORD, "word", negated=True)),
        ('-"exact phrase"', Term(PHRASE, "exact phrase", negated=True)),
        ("-from:bob", Term("from", "bob", negated=True)),
        ("-is:read", Term("is", "read", negated=True)),
        ('-in:"Project X"', Term("in", "Project X", negated=True)),
        ("-https://example.com/x", Term(WORD, "https://example.com/x", negated=True)),
        ("--word", Term(WORD, "--word")),
        ("--", Term(WORD, "--")),
        ("-", Term(WORD, "-")),
        ("e-mail", Term(WORD, "e-mail")),
    ],
)
def test_negation(text, expected):
    assert terms(text) == [expected]


def test_a_lone_dash_is_a_word_not_a_negation():
    assert terms("budget - draft") == [Term(WORD, "budget"), Term(WORD, "-"), Term(WORD, "draft")]


def test_quotes_end_a_bare_word():
    assert terms('foo"bar baz"') == [Term(WORD, "foo"), Term(PHRASE, "bar baz")]
    assert terms('from:"bob"smith') == [Term("from", "bob"), Term(WORD, "smith")]
    assert terms('from:bob"x y"') == [Term("from", "bob"), Term(PHRASE, "x y")]


@pytest.mark.parametrize(
    "text",
    [
        "http://x",
        "https://example.com/a?b=c&d=e",
        "ftp://host/file",
        "Re:",
        "Fwd:",
        "10:30",
        "3:1",
        "2024-03-01T10:00",
    ],
)
def test_colons_in_free_text(text):
    assert terms(text) == [Term(WORD, text)]


def test_reply_prefix_then_words():
    assert terms("Re: budget") == [Term(WORD, "Re:"), Term(WORD, "budget")]


def test_quoted_operator_shape_is_a_phrase():
    assert terms('"ticket:1234"') == [Term(PHRASE, "ticket:1234")]


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\u3000\u00a0"])
def test_empty_query_has_no_terms(text):
    assert parse_search_query(text) == SearchQuery(terms=())


def test_unicode_white_space_separates_terms():
    assert terms("a\u3000b\u00a0c\nd") == [Term(WORD, w) for w in "abcd"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "'; DROP TABLE email_messages; --",
            [Term(WORD, w) for w in ["';", "DROP", "TABLE", "email_messages;", "--"]],
        ),
        ("%", [Term(WORD, "%")]),
        ("_", [Term(WORD, "_")]),
        ("\\", [Term(WORD, "\\")]),
        ("subject:\\'%_", [Term("subject", "\\'%_")]),
        ('subject:"\\"', [Term("subject", "\\")]),  # no escapes inside quotes
        ("Grüße 日本語 📎", [Term(WORD, "Grüße"), Term(WORD, "日本語"), Term(WORD, "📎")]),
        ("from:josé@exämple.org", [Term("from", "josé@exämple.org")]),
        ("zero\u200bwidth", [Term(WORD, "zero\u200bwidth")]),
    ],
)
def test_hostile_and_unusual_input_parses_as_text(text, expected):
    assert terms(text) == expected


def test_limits_are_inclusive():
    assert len(terms("a" * MAX_QUERY_LENGTH)) == 1
    assert len(terms(" ".join(["w"] * MAX_TERMS))) == MAX_TERMS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"abc', 'Unbalanced quote: the " at character 1 is never closed.'),
        ('invoice subject:"abc', 'Unbalanced quote: the " at character 17 is never closed.'),
        ('a "b" "c', 'the " at character 7 is never closed'),
        ('""', "Empty quotes"),
        ('-"  "', "Empty quotes"),
        ("from:", "from: needs a value right after the colon"),
        ("from: bob", "from: needs a value right after the colon, with no space: from:something"),
        ('to:""', "to: needs a value"),
        ('subject:"   "', "subject: needs a value"),
        ("-in:", "in: needs a value"),
        ("is:foo", 'Unknown is: value "foo". Use is:unread, is:read or is:flagged.'),
        ("has:pdf", 'Unknown has: value "pdf". Use has:attachment.'),
        ("before:yesterday", 'before: takes a date as YYYY-MM-DD, e.g. before:2024-03-31, not "yesterday".'),
        ("after:2024-3-1", "after: takes a date as YYYY-MM-DD"),
        ("after:2024/03/01", "after: takes a date as YYYY-MM-DD"),
        ("after:20240301", "after: takes a date as YYYY-MM-DD"),
        ("after:\u0662\u0660\u0662\u0664-03-01", "after: takes a date as YYYY-MM-DD"),  # Arabic-Indic digits
        ("before:2024-02-30", "before:2024-02-30 is not a date of the calendar."),
        ("before:2023-13-01", "is not a date of the calendar"),
        ("account:work", 'account: takes an account\'s e-mail address or id, not "work".'),
        ("foo:bar", 'Unknown operator "foo:". Known operators: from:, to:, cc:, subject:, has:, is:, in:,'),
        ("form:bob", 'To search for the text itself, put it in quotes: "form:bob".'),
        ("-label:work", 'Unknown operator "label:"'),
        ("mailto:bob@example.com", 'Unknown operator "mailto:"'),
        ("a" * (MAX_QUERY_LENGTH + 1), "The search is too long: at most 500 characters."),
        (" ".join(["w"] * (MAX_TERMS + 1)), "The search has too many terms: at most 30."),
        ("nul\x00byte", "The search contains a control character (at character 4)."),
        ("esc\x1b[0m", "control character"),
        ("\x7f", "control character"),
        ("lone \ud800 surrogate", "control character"),
    ],
)
def test_malformed_queries_are_refused_with_a_helpful_message(text, message):
    assert message in error_of(text)


def test_an_error_message_cuts_long_user_text_short():
    message = error_of("zz:" + "x" * 300)
    assert len(message) < 300
    assert '"zz:' + "x" * 36 + '…"' in message


def test_the_error_is_a_value_error_and_an_application_error():
    with pytest.raises(SearchQueryError) as info:
        parse_search_query("is:nonsense")
    exc = info.value
    assert isinstance(exc, ValueError)
    assert isinstance(exc, ApplicationError)
    assert exc.code == "invalid_search_query"
    assert exc.status_code == 400
    assert str(exc) == exc.message


def test_positive_text_makes_one_tsquery_and_negated_text_its_own():
    condition, text = search_filter(parse_search_query('invoice "quarterly report" paid -draft from:bob'))
    sql = str(Message.objects.filter(condition).values("id").query)
    assert sql.count('"search_vector" @@') == 2  # one for the three positive terms, one for -draft
    assert '"from_trigrams"' not in sql  # only in from:bob's candidates, below
    assert sql.count("plainto_tsquery") == 3
    assert sql.count("phraseto_tsquery") == 1
    assert "to_tsquery(" not in sql.replace("plainto_tsquery(", "").replace("phraseto_tsquery(", "")
    assert text is not None

    assert search_filter(parse_search_query("-draft from:bob"))[1] is None

    [from_bob, _] = positive_conditions(parse_search_query('invoice "quarterly report" paid -draft from:bob'))
    fetch = str(Message.objects.filter(from_bob.condition).values("id").query)
    guess = str(Message.objects.filter(from_bob.estimate).values("id").query)
    assert "\"from_trigrams\" @@ 'bob'::tsquery" in fetch and "ILIKE" in fetch
    assert "from_trigrams" not in guess and "ILIKE" in guess


def test_unknown_order_is_refused():
    with pytest.raises(SearchQueryError, match="use newest or relevance"):
        apply_search(Message.objects.none(), parse_search_query("x"), order="oldest")


# --- Searching the database ---------------------------------------------------------


@pytest.fixture
def account(db, tenant_a):
    return EmailAccountFactory(tenant=tenant_a, email_address="Me@Work.example")


@pytest.fixture
def inbox(account):
    return FolderFactory(account=account, name="INBOX", type="inbox")


def message(folder, **fields):
    return MessageFactory(folder=folder, **fields)


def search(tenant, text, *, order="newest", queryset=None):
    """Subjects of the matches, in order, searched as the API will."""
    search_index_pending(tenant_id=tenant.id)
    with tenant_scope(tenant.id):
        queryset = Message.objects.for_tenant(tenant) if queryset is None else queryset
        found = apply_search(queryset, parse_search_query(text), order=order)
        return list(found.values_list("subject", flat=True))


def found(tenant, text):
    return sorted(search(tenant, text))


def test_words_match_subject_sender_and_body_stemmed(db, tenant_a, inbox):
    message(inbox, subject="Invoice 42", text_body="Please pay.")
    message(inbox, subject="Hello", text_body="The invoices are attached.")
    message(inbox, subject="From Ivan", from_name="Ivan Invoice", text_body="hi")
    message(inbox, subject="Unrelated", text_body="Nothing to see.")

    assert found(tenant_a, "invoice") == ["From Ivan", "Hello", "Invoice 42"]
    assert found(tenant_a, "INVOICES") == ["From Ivan", "Hello", "Invoice 42"]
    assert found(tenant_a, "invoice attached") == ["Hello"]
    assert found(tenant_a, "invoice -attached") == ["From Ivan", "Invoice 42"]
    assert found(tenant_a, "-invoice") == ["Unrelated"]


def test_phrases_match_words_in_order(db, tenant_a, inbox):
    message(inbox, subject="A", text_body="the quarterly report is late")
    message(inbox, subject="B", text_body="report on the quarterly numbers")

    assert found(tenant_a, '"quarterly report"') == ["A"]
    assert found(tenant_a, "quarterly report") == ["A", "B"]
    assert found(tenant_a, 'quarterly -"quarterly report"') == ["B"]


def test_stop_words_and_punctuation_alone_match_nothing_and_are_ignored_with_others(db, tenant_a, inbox):
    message(inbox, subject="The budget", text_body="x")

    assert found(tenant_a, "the") == []
    assert found(tenant_a, "%") == []
    assert found(tenant_a, "the budget - %") == ["The budget"]


def test_unindexed_messages_are_not_found_by_words(db, tenant_a, inbox):
    search_index_pending(tenant_id=tenant_a.id)
    message(inbox, subject="Not indexed yet", text_body="invoice")
    with tenant_scope(tenant_a.id):
        query = parse_search_query("invoice")
        assert not apply_search(Message.objects.for_tenant(tenant_a), query).exists()
        negated = apply_search(Message.objects.for_tenant(tenant_a), parse_search_query("-invoice"))
        assert list(negated.values_list("subject", flat=True)) == ["Not indexed yet"]


def test_from_matches_address_or_name_case_insensitively(db, tenant_a, inbox):
    message(inbox, subject="1", from_address="bob@example.com", from_name="Robert Smith")
    message(inbox, subject="2", from_address="alice@example.org", from_name="Alice Bobson")
    message(inbox, subject="3", from_address="carol@example.net", from_name="Carol")

    assert found(tenant_a, "from:bob") == ["1", "2"]
    assert found(tenant_a, "from:BOB@EXAMPLE.COM") == ["1"]
    assert found(tenant_a, 'from:"robert smith"') == ["1"]
    assert found(tenant_a, "from:example.org") == ["2"]
    assert found(tenant_a, "-from:bob") == ["3"]


def test_to_and_cc_match_any_recipient_name_or_address(db, tenant_a, inbox):
    message(
        inbox,
        subject="1",
        to=[
            {"name": "Rita Reader", "address": "rita@example.com"},
            {"name": "", "address": "ops@corp.example"},
        ],
        cc=[],
    )
    message(
        inbox,
        subject="2",
        to=[{"name": "Zoë", "address": "zoe@example.com"}],
        cc=[{"name": "", "address": "rita@x.example"}],
    )
    message(inbox, subject="3", to=[], cc=[])

    assert found(tenant_a, "to:rita") == ["1"]
    assert found(tenant_a, 'to:"rita reader"') == ["1"]
    assert found(tenant_a, "to:OPS@corp") == ["1"]
    assert found(tenant_a, "to:Zoë") == ["2"]
    assert found(tenant_a, "cc:rita") == ["2"]
    assert found(tenant_a, "-to:rita") == ["2", "3"]
    assert found(tenant_a, "-cc:rita") == ["1", "3"]


def test_a_whole_address_is_that_address_exactly(db, tenant_a, inbox):
    """As in Gmail: from:/to:/cc: with a whole address match the address
    itself, case-insensitively; a longer address around it, or a name that
    contains it, does not count (it does for a part of an address)."""
    message(
        inbox, subject="1", from_address="Bob@Example.com", to=[{"name": "", "address": "Ops@Corp.example"}]
    )
    message(inbox, subject="2", from_address="jimbob@example.com", from_name="bob@example.com")
    message(
        inbox,
        subject="3",
        from_address="carol@example.net",
        to=[
            {"name": "ops@corp.example", "address": "team@corp.example"},
            {"name": "X", "address": "x@y.example"},
        ],
        cc=[{"name": "", "address": "OPS@corp.example"}, {"name": "", "address": "zoë@exämple.org"}],
    )

    assert found(tenant_a, "from:bob@example.com") == ["1"]
    assert found(tenant_a, "from:BOB@EXAMPLE.COM") == ["1"]
    assert found(tenant_a, "-from:bob@example.com") == ["2", "3"]
    assert found(tenant_a, "from:bob@example") == ["1", "2"]  # no dot after the @: a substring
    assert found(tenant_a, "to:ops@corp.example") == ["1"]
    assert found(tenant_a, "to:x@y.example") == ["3"]
    assert found(tenant_a, "cc:ops@corp.example") == ["3"]
    assert found(tenant_a, "cc:ZOË@EXÄMPLE.ORG") == ["3"]
    assert found(tenant_a, "-to:ops@corp.example") == ["2", "3"]
    assert found(tenant_a, "to:ops@corp") == ["1", "3"]  # a part: names count too


def test_to_does_not_match_the_json_keys(db, tenant_a, inbox):
    message(inbox, subject="1", to=[{"name": "Rita", "address": "rita@example.com"}])

    for key_text in ("name", "address", "dre", "me"):
        assert found(tenant_a, f"to:{key_text}") == [], key_text


def test_subject_is_a_substring_match(db, tenant_a, inbox):
    message(inbox, subject="Re: Quarterly Report Q3")
    message(inbox, subject="Report, quarterly")

    assert found(tenant_a, "subject:report") == ["Re: Quarterly Report Q3", "Report, quarterly"]
    assert found(tenant_a, 'subject:"quarterly report"') == ["Re: Quarterly Report Q3"]
    assert found(tenant_a, "subject:rterly") == ["Re: Quarterly Report Q3", "Report, quarterly"]
    assert found(tenant_a, "-subject:q3") == ["Report, quarterly"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("subject:100%", ["100% done"]),
        ("subject:%", ["100% done"]),
        ("subject:a_b", ["a_b"]),
        ("subject:_", ["a_b"]),
        ("subject:C:\\temp", ["C:\\temp"]),
        ("subject:\\", ["C:\\temp"]),
        ("from:%", ["100% done"]),
        ("to:_", ["a_b"]),
    ],
)
def test_like_wildcards_in_values_match_literally(db, tenant_a, inbox, text, expected):
    message(inbox, subject="100% done", from_address="100%@example.com", to=[])
    message(inbox, subject="1000 done", to=[])
    message(inbox, subject="a_b", to=[{"name": "", "address": "a_b@example.com"}])
    message(inbox, subject="axb", to=[{"name": "", "address": "axb@example.com"}])
    message(inbox, subject="C:\\temp", to=[])
    message(inbox, subject="C:temp", to=[])

    assert found(tenant_a, text) == expected


def test_flags_and_attachments(db, tenant_a, inbox):
    message(inbox, subject="read", is_read=True)
    message(inbox, subject="unread", is_read=False)
    message(inbox, subject="flagged", is_read=True, is_flagged=True)
    message(inbox, subject="attached", is_read=True, has_attachments=True)

    assert found(tenant_a, "is:unread") == ["unread"]
    assert found(tenant_a, "is:read") == ["attached", "flagged", "read"]
    assert found(tenant_a, "-is:read") == ["unread"]
    assert found(tenant_a, "is:flagged") == ["flagged"]
    assert found(tenant_a, "is:starred") == ["flagged"]
    assert found(tenant_a, "-is:flagged is:read") == ["attached", "read"]
    assert found(tenant_a, "has:attachment") == ["attached"]
    assert found(tenant_a, "-has:attachment is:read") == ["flagged", "read"]


def test_in_takes_a_folder_type_or_a_folder_name(db, tenant_a, account, inbox):
    trash = FolderFactory(account=account, name="Deleted Items", type="trash")
    project = FolderFactory(account=account, name="INBOX/Project X", type="custom")
    archive_named = FolderFactory(account=account, name="Archive", type="custom")
    message(inbox, subject="in inbox")
    message(trash, subject="in trash")
    message(project, subject="in project")
    message(archive_named, subject="in a folder named archive")

    assert found(tenant_a, "in:inbox") == ["in inbox"]
    assert found(tenant_a, "in:TRASH") == ["in trash"]
    assert found(tenant_a, '-in:trash -in:"inbox/project x"') == ["in a folder named archive", "in inbox"]
    assert found(tenant_a, 'in:"inbox/project x"') == ["in project"]
    assert found(tenant_a, 'in:"deleted items"') == ["in trash"]
    # A type word means the type: a custom folder called "Archive" is not it.
    assert found(tenant_a, "in:archive") == []
    assert found(tenant_a, "in:nowhere") == []


def test_after_is_inclusive_before_is_exclusive_in_utc(db, tenant_a, inbox):
    def at(*args, tz=UTC):
        return datetime.datetime(*args, tzinfo=tz)

    message(inbox, subject="feb 29 late", received_at=at(2024, 2, 29, 23, 59, 59))
    message(inbox, subject="mar 1 start", received_at=at(2024, 3, 1))
    message(inbox, subject="mar 1 end", received_at=at(2024, 3, 1, 23, 59, 59, 999999))
    message(inbox, subject="mar 2 start", received_at=at(2024, 3, 2))
    # 01:00 on the 2nd in Berlin is still the 1st in UTC.
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    message(inbox, subject="mar 1 utc", received_at=at(2024, 3, 2, 0, 30, tz=berlin))
    message(inbox, subject="no date", received_at=None)

    assert found(tenant_a, "after:2024-03-01 before:2024-03-02") == ["mar 1 end", "mar 1 start", "mar 1 utc"]
    assert found(tenant_a, "before:2024-03-01") == ["feb 29 late"]
    assert found(tenant_a, "after:2024-03-02") == ["mar 2 start"]
    # Negation keeps messages without a date: they are not known to be before.
    assert found(tenant_a, "-before:2024-03-02") == ["mar 2 start", "no date"]
    assert found(tenant_a, "after:0001-01-01 before:9999-12-31") == [
        "feb 29 late",
        "mar 1 end",
        "mar 1 start",
        "mar 1 utc",
        "mar 2 start",
    ]


def test_account_by_address_or_id(db, tenant_a, account, inbox):
    other = EmailAccountFactory(tenant=tenant_a, email_address="private@home.example")
    message(inbox, subject="work")
    message(FolderFactory(account=other, name="INBOX", type="inbox"), subject="home")

    assert found(tenant_a, "account:me@work.example") == ["work"]
    assert found(tenant_a, "account:PRIVATE@HOME.EXAMPLE") == ["home"]
    assert found(tenant_a, f"account:{other.id}") == ["home"]
    assert found(tenant_a, f"-account:{other.id}") == ["work"]
    assert found(tenant_a, "-account:me@work.example") == ["home"]
    assert found(tenant_a, f"account:{uuid.uuid4()}") == []


def test_terms_are_anded(db, tenant_a, account, inbox):
    archive = FolderFactory(account=account, name="Archive", type="archive")
    received = datetime.datetime(2024, 5, 1, 12, tzinfo=UTC)
    fields = {
        "subject": "Budget 2024",
        "from_address": "bob@example.com",
        "text_body": "the draft budget",
        "is_read": False,
        "has_attachments": True,
        "received_at": received,
    }
    message(inbox, **fields)
    message(archive, **{**fields, "subject": "archived"})
    message(inbox, **{**fields, "subject": "read", "is_read": True})
    message(inbox, **{**fields, "subject": "no file", "has_attachments": False})
    message(inbox, **{**fields, "subject": "alice", "from_address": "alice@example.com"})
    message(inbox, **{**fields, "subject": "old", "received_at": received - datetime.timedelta(days=365)})
    message(inbox, **{**fields, "subject": "final", "text_body": "the final budget"})

    text = 'budget "draft budget" from:bob in:inbox is:unread has:attachment after:2024-01-01 -subject:final'
    assert found(tenant_a, text) == ["Budget 2024"]
    assert found(tenant_a, text.replace("in:inbox", "-in:inbox")) == ["archived"]


def test_newest_order(db, tenant_a, inbox):
    now = datetime.datetime(2024, 6, 1, tzinfo=UTC)
    message(inbox, subject="older", received_at=now - datetime.timedelta(days=1))
    message(inbox, subject="newest", received_at=now)
    message(inbox, subject="oldest", received_at=now - datetime.timedelta(days=2))

    assert search(tenant_a, "") == ["newest", "older", "oldest"]
    assert search(tenant_a, "message") == ["newest", "older", "oldest"]  # all bodies say "message"


def test_relevance_order_puts_subject_above_sender_above_body(db, tenant_a, inbox):
    now = datetime.datetime(2024, 6, 1, tzinfo=UTC)
    message(inbox, subject="body hit", text_body="about the invoice", received_at=now)
    message(
        inbox,
        subject="sender hit",
        from_name="Invoice Desk",
        text_body="x",
        received_at=now - datetime.timedelta(days=1),
    )
    message(inbox, subject="The invoice", text_body="x", received_at=now - datetime.timedelta(days=2))
    message(
        inbox, subject="other body hit", text_body="an invoice", received_at=now - datetime.timedelta(days=3)
    )

    assert search(tenant_a, "invoice", order="relevance") == [
        "The invoice",
        "sender hit",
        "body hit",
        "other body hit",
    ]
    assert search(tenant_a, "invoice") == ["body hit", "sender hit", "The invoice", "other body hit"]
    # Without positive words there is no relevance: newest first.
    assert search(tenant_a, "-invoice", order="relevance") == []
    assert search(tenant_a, "from:example", order="relevance") == [
        "body hit",
        "sender hit",
        "The invoice",
        "other body hit",
    ]


def test_hostile_values_reach_the_database_as_data(db, tenant_a, inbox):
    message(inbox, subject="'; DROP TABLE email_messages; --", text_body="drop table")
    message(inbox, subject="plain")
    hostile = [
        "'; DROP TABLE email_messages; --",
        "subject:';DROP",
        "from:\\'",
        "to:'))--",
        'in:"x\'; DELETE FROM email_messages; --"',
        "account:x@y'--",
        "')) OR 1=1 --",
        "!!& | <-> :* ''",
        "a :*",
        "日本語 Grüße 📎",
    ]
    for text in hostile:
        search(tenant_a, text)  # no error
    assert found(tenant_a, "subject:';") == ["'; DROP TABLE email_messages; --"]
    assert found(tenant_a, "drop table") == ["'; DROP TABLE email_messages; --"]
    assert found(tenant_a, "')) OR 1=1 --") == []
    with tenant_scope(tenant_a.id):
        assert Message.objects.count() == 2


def test_unicode_values(db, tenant_a, inbox):
    message(inbox, subject="Grüße aus Köln", text_body="Schöne Grüße")
    message(inbox, subject="会議の議事録", from_name="山田 太郎")

    assert found(tenant_a, "subject:Köln") == ["Grüße aus Köln"]
    assert found(tenant_a, "Grüße") == ["Grüße aus Köln"]
    assert found(tenant_a, "subject:議事録") == ["会議の議事録"]
    assert found(tenant_a, "from:山田") == ["会議の議事録"]


def test_another_tenants_messages_never_appear(db, tenant_a, tenant_b, inbox):
    message(inbox, subject="mine: invoice", from_address="bob@example.com")
    b_account = EmailAccountFactory(tenant=tenant_b, email_address="me@work.example")
    b_inbox = FolderFactory(account=b_account, name="INBOX", type="inbox")
    b_folder = FolderFactory(account=b_account, name="Secret", type="custom")
    message(b_inbox, subject="theirs: invoice", from_address="bob@example.com")
    message(b_folder, subject="theirs: secret", from_address="bob@example.com")
    search_index_pending(tenant_id=tenant_b.id)

    for text in ["invoice", "from:bob", "in:inbox", "account:me@work.example", "", "-nothing"]:
        assert search(tenant_a, text) == ["mine: invoice"], text
        # RLS alone hides them too, with no tenant filter on the queryset.
        assert search(tenant_a, text, queryset=Message.objects.all()) == ["mine: invoice"], text
    assert search(tenant_a, "in:secret") == []
    assert search(tenant_a, f"account:{b_account.id}") == []


@pytest.mark.usefixtures("committed_db")
def test_the_search_keeps_the_callers_tenant_filter_without_rls(tenant_a, tenant_b):
    """Through the BYPASSRLS admin role only the queryset's own filter stands:
    no join of in: or account: may widen it."""
    a_inbox = FolderFactory(account=EmailAccountFactory(tenant=tenant_a), name="INBOX", type="inbox")
    b_account = EmailAccountFactory(tenant=tenant_b, email_address="b@example.com")
    b_folder = FolderFactory(account=b_account, name="Secret", type="custom")
    message(a_inbox, subject="mine: invoice")
    message(b_folder, subject="theirs: invoice")
    search_index_pending(tenant_id=tenant_a.id)
    search_index_pending(tenant_id=tenant_b.id)

    everyone = Message.objects.using("admin")
    mine = everyone.for_tenant(tenant_a)
    # The admin connection sees both tenants: the test can tell.
    assert sorted(
        apply_search(everyone, parse_search_query("invoice")).values_list("subject", flat=True)
    ) == [
        "mine: invoice",
        "theirs: invoice",
    ]
    for text in ["invoice", "", "in:secret", f"account:{b_account.id}", "account:b@example.com", "-in:inbox"]:
        result = apply_search(mine, parse_search_query(text)).values_list("subject", flat=True)
        assert set(result) <= {"mine: invoice"}, text


def test_a_search_is_one_query(db, tenant_a, account, inbox, django_assert_num_queries):
    message(inbox, subject="Budget", is_read=False)
    search_index_pending(tenant_id=tenant_a.id)
    query = parse_search_query('budget in:inbox in:"INBOX" account:me@work.example -from:zzz is:unread')
    with tenant_scope(tenant_a.id):
        queryset = apply_search(Message.objects.for_tenant(tenant_a), query, order="relevance")
        with django_assert_num_queries(1):
            assert len(queryset) == 1


@pytest.mark.django_db(databases=["default", "admin"])
@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("quarterly invoice", "gin_messages_search"),
        ('"quarterly invoice" -paid', "gin_messages_search"),
        ("subject:invoice", "gin_messages_subject_trgm"),
        ("subject:quarterly%", "gin_messages_subject_trgm"),
        ("from:alice", "gin_messages_from_trgm"),
        ("to:reader", "gin_messages_to_trgm"),
        ("cc:reader", "gin_messages_cc_trgm"),
        ("to:reader@example.com", "gin_messages_to_addresses"),
        ("cc:reader@example.com", "gin_messages_cc_addresses"),
    ],
)
def test_the_indexes_can_serve_the_search(text, index):
    """Not a speed test: told to avoid table scans, the planner finds a way
    through the index. Through the admin role, so that RLS's tenant
    condition offers no other index."""
    [candidate] = positive_conditions(parse_search_query(text))
    with transaction.atomic(using="admin"), connections["admin"].cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = Message.objects.using("admin").filter(candidate.condition).explain()
    assert f"Bitmap Index Scan on {index}" in plan


def test_from_a_whole_address_has_a_newest_first_index(db):
    """One tenant's mail from one address, newest first, as the API asks for
    it, can be read off one index and stopped at the page. (On an empty
    table the planner's choice between this and the tenant's newest-first
    index is a coin toss, so the definition is checked; bench/ shows the
    plan at 1,000,000 messages.)"""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef('idx_messages_from_key'::regclass)")
        (definition,) = cursor.fetchone()
    assert definition.endswith("(tenant_id, from_key, received_at DESC, id DESC) WHERE (NOT is_deleted)"), (
        definition
    )


@pytest.mark.parametrize(
    ("text", "condition"),
    [
        ("quarterly invoice", "search_vector @@"),
        ("subject:invoice", "subject_trigrams @@ '''inv'' & ''nvo'' & ''voi'' & ''oic'' & ''ice'''::tsquery"),
        ("from:alice", "from_trigrams @@ '''ali'' & ''lic'' & ''ice'''::tsquery"),
        ("to:reader", "to_trigrams @@ '''rea'' & ''ead'' & ''ade'' & ''der'''::tsquery"),
        ("cc:reader", "cc_trigrams @@ '''rea'' & ''ead'' & ''ade'' & ''der'''::tsquery"),
        ("from:alice@example.com", "from_key = "),
        ("to:reader@example.com", "to_addresses @> "),
        ("cc:reader@example.com", "cc_addresses @> "),
    ],
)
def test_search_conditions_are_leakproof_so_rls_keeps_their_indexes(db, tenant_a, text, condition):
    """Under row-level security PostgreSQL evaluates the policy before any
    condition whose function is not LEAKPROOF, and such a condition cannot be
    an index condition: at 1,000,000 messages a word search scanned the table.
    setupdb marks @@ and jsonb's @> leakproof (= on text is already), not
    ILIKE; each search's index condition is one of them on a plain column (no
    other function around it)."""
    [candidate] = positive_conditions(parse_search_query(text))
    with tenant_scope(tenant_a.id), connection.cursor() as cursor:
        plan = Message.objects.for_tenant(tenant_a).filter(candidate.condition).explain()
        cursor.execute(
            "SELECT bool_and(proleakproof) FROM pg_proc WHERE oid IN "
            "('pg_catalog.ts_match_vq(tsvector, tsquery)'::regprocedure, "
            "'pg_catalog.jsonb_contains(jsonb, jsonb)'::regprocedure, "
            "'pg_catalog.texteq(text, text)'::regprocedure)"
        )
        assert cursor.fetchone()[0] is True
    assert condition in plan


@pytest.mark.usefixtures("committed_db")
def test_ilike_is_not_leakproof_so_its_errors_reveal_no_other_tenants_row(tenant_a, tenant_b):
    """ILIKE with a pattern ending in the escape character raises an error
    only when it reaches that end, that is when a row's text matches what
    comes before. Marked LEAKPROOF (as setupdb once did), it ran before the
    tenant policy, on every tenant's rows: tenant A's error told whether B
    had a subject starting "Merger with A"; then "Merger with Ac", and so on.
    Not leakproof, it sees only A's rows, and A's answer is the same whatever
    B holds. (With texticlike marked LEAKPROOF this test fails.)"""
    message(FolderFactory(account=EmailAccountFactory(tenant=tenant_a)), subject="Lunch on Friday")
    message(FolderFactory(account=EmailAccountFactory(tenant=tenant_b)), subject="Merger with Acme")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT proleakproof FROM pg_proc WHERE oid = 'pg_catalog.texticlike(text, text)'::regprocedure"
        )
        assert cursor.fetchone() == (False,)
    # A table scan (where a leakproof ILIKE, being cheaper, ran before the
    # policy) and an index scan.
    for plan_switches in (("enable_indexscan", "enable_bitmapscan"), ("enable_seqscan",)):
        for probe in ("Merger with A%\\", "Merger with Z%\\", "Lunch on X%\\"):
            with tenant_scope(tenant_a.id), connection.cursor() as cursor:
                for switch in plan_switches:
                    cursor.execute(f"SET LOCAL {switch} = off")
                cursor.execute("SELECT count(*) FROM email_messages WHERE subject ILIKE %s", [probe])
                assert cursor.fetchone() == (0,), probe
    # A's own matching row does raise: the error is about A's rows only.
    with (
        pytest.raises(DataError, match="must not end with escape"),
        tenant_scope(tenant_a.id),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT count(*) FROM email_messages WHERE subject ILIKE %s", ["Lunch on F%\\"])


@pytest.mark.usefixtures("committed_db")
def test_the_planner_knows_a_folder_lies_in_one_account_and_tenant(tenant_a, tenant_b):
    """Search plans are chosen from row estimates (`selectors.narrow_to_candidate_ids`);
    taken as independent, the tenant, account and folder conditions would
    be expected to hold for an eighth of a folder (migration 0012)."""
    tenants = (tenant_a, tenant_a, tenant_b, tenant_b)
    folders = [FolderFactory(account=EmailAccountFactory(tenant=t)) for t in tenants]
    for folder in folders:
        Message.objects.using("admin").bulk_create(MessageFactory.build_batch(250, folder=folder))
    with connections["owner"].cursor() as cursor:
        cursor.execute("ANALYZE email_messages")

    folder = folders[0]
    with tenant_scope(tenant_a.id):
        in_folder = Message.objects.for_tenant(tenant_a).filter(account_id=folder.account_id, folder=folder)
        assert 200 <= selectors.estimated_rows(in_folder) <= 300


@pytest.mark.django_db
def test_a_rare_address_is_tried_by_id_whatever_the_sampled_guess(tenant_a, monkeypatch):
    """The planner's guess for a whole address comes from ANALYZE's sample:
    one sampled message to it and the guess is about the id limit. Below
    KEYED_SHARE of the scope an address is tried by id anyway; above it,
    or for a word guessed as high, the search is left to the walk."""
    inbox = FolderFactory(account=EmailAccountFactory(tenant=tenant_a), name="INBOX", type="inbox")
    rare = {"name": "", "address": "rare@example.com"}
    for i in range(3):
        message(inbox, subject=f"to rare {i}", to=[rare])
    for i in range(4):
        message(inbox, subject=f"other {i}")
    search_index_pending(tenant_id=tenant_a.id)
    monkeypatch.setattr(selectors, "SELECTIVE_MATCHES", 3)
    monkeypatch.setattr(selectors, "SELECTIVE_SHARE", 0)

    def narrowed(text: str, guess_share: float) -> tuple[list[str], bool]:
        scope = Message.objects.for_tenant(tenant_a)
        query = parse_search_query(text)
        guesses = {str(scope.query): 1000}
        monkeypatch.setattr(
            selectors, "estimated_rows", lambda qs: guesses.get(str(qs.query), guess_share * 1000)
        )
        with tenant_scope(tenant_a.id):
            found, by_ids = selectors.narrow_to_candidate_ids(
                apply_search(scope, query), scope=scope, candidates=positive_conditions(query)
            )
            return sorted(found.values_list("subject", flat=True)), by_ids

    to_rare = [f"to rare {i}" for i in range(3)]
    assert narrowed("to:rare@example.com", 0.04) == (to_rare, True)
    assert narrowed("cc:rare@example.com", 0.04) == ([], True)
    assert narrowed("to:rare@example.com", 0.06) == (to_rare, False)  # a common address: the walk
    assert narrowed("rare", 0.04) == (to_rare, False)  # a word is taken at its guess
    assert narrowed("to:rare", 0.04) == (to_rare, False)  # part of an address: no key
    monkeypatch.setattr(selectors, "SELECTIVE_MATCHES", 2)
    assert narrowed("to:rare@example.com", 0.04) == (to_rare, False)  # more than the limit: the walk


@pytest.mark.django_db
def test_candidates_are_fetched_over_the_tenant_then_paged_within_the_scope(tenant_a, monkeypatch):
    """A word's ids come from the whole tenant (so the planner cannot
    intersect them with a big account's index), and from the scope only
    when the tenant holds too many; either way only the scope's messages
    are found."""
    mine, theirs = (FolderFactory(account=EmailAccountFactory(tenant=tenant_a)) for _ in range(2))
    message(mine, subject="zebra mine")
    message(mine, subject="yak mine")
    for i in range(2):
        message(theirs, subject=f"zebra theirs {i}")
    search_index_pending(tenant_id=tenant_a.id)
    monkeypatch.setattr(selectors, "SELECTIVE_MATCHES", 2)
    monkeypatch.setattr(selectors, "SELECTIVE_SHARE", 0)
    monkeypatch.setattr(selectors, "estimated_rows", lambda qs: 1)  # every candidate expected rare

    def search_mine(text: str) -> tuple[list[str], bool, int]:
        scope = selectors.all_tenant_messages(tenant=tenant_a).filter(account_id=mine.account_id)
        query = parse_search_query(text)
        with tenant_scope(tenant_a.id), CaptureQueriesContext(connection) as fetches:
            found, by_ids = selectors.narrow_to_candidate_ids(
                apply_search(scope, query),
                scope=scope,
                candidates=positive_conditions(query),
                whole_tenant=selectors.all_tenant_messages(tenant=tenant_a),
            )
        with tenant_scope(tenant_a.id):
            return sorted(found.values_list("subject", flat=True)), by_ids, len(fetches.captured_queries)

    assert search_mine("yak") == (["yak mine"], True, 1)  # one fetch, over the tenant
    assert search_mine("zebra") == (["zebra mine"], True, 2)  # 3 in the tenant: fetched again, in the scope

    # Over the whole tenant (an admin's search) the second fetch would be the first again.
    tenant = selectors.all_tenant_messages(tenant=tenant_a)
    query = parse_search_query("zebra")
    with tenant_scope(tenant_a.id), CaptureQueriesContext(connection) as fetches:
        found, by_ids = selectors.narrow_to_candidate_ids(
            apply_search(tenant, query),
            scope=tenant,
            candidates=positive_conditions(query),
            whole_tenant=tenant,
        )
    assert (by_ids, len(fetches.captured_queries)) == (False, 1)
    with tenant_scope(tenant_a.id):
        assert found.count() == 3


# --- Time limits ------------------------------------------------------------------


@contextlib.contextmanager
def table_locked_by_owner():
    """email_messages locked by another session (the owner's), so that any
    statement reading it waits: a statement that runs too long, on demand."""
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cursor:
        cursor.execute("LOCK TABLE email_messages IN ACCESS EXCLUSIVE MODE")
        yield


@pytest.mark.usefixtures("committed_db")
def test_the_sender_filter_finds_its_candidates_through_an_index_under_rls(user_a, tenant_a, inbox_a):
    """`/api/messages/?sender=` was `UPPER(from_address) LIKE ...`, which
    under row-level security no index serves (not leakproof): 4.7 s over
    100,000 messages, every row of the tenant filtered. Now, as `from:`, the
    candidates are fetched by the trigram match, an index condition under
    RLS (the runtime role here), and ILIKE checks them."""
    mine = message(inbox_a, subject="from zzqx", from_address="zzqx@example.com")
    Message.objects.using("admin").bulk_create(MessageFactory.build_batch(500, folder=inbox_a))
    with connections["owner"].cursor() as cursor:  # (VACUUM: the GIN index's pending entries, merged)
        cursor.execute("VACUUM ANALYZE email_messages")
    client = bearer_client(user_a, tenant_a)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/messages/", {"sender": "ZZQX"})
    assert [m["id"] for m in response.json()["results"]] == [str(mine.id)]
    fetches = [q["sql"] for q in queries.captured_queries if '"from_trigrams" @@' in q["sql"]]
    assert fetches, [q["sql"] for q in queries.captured_queries]
    assert not any("UPPER(" in q["sql"] for q in queries.captured_queries)
    with tenant_scope(tenant_a.id), connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {fetches[0]}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Bitmap Index Scan on gin_messages_from_trgm" in plan, plan


def test_the_runtime_role_has_a_statement_timeout(db, settings):
    with connection.cursor() as cursor:
        cursor.execute("SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'")
        assert cursor.fetchone() == (settings.DATABASE_STATEMENT_TIMEOUT_MS,)
    assert settings.DATABASE_STATEMENT_TIMEOUT_MS == 60_000


@pytest.mark.usefixtures("committed_db")
@pytest.mark.parametrize(
    "path", ["/api/sync/search?query=-invoice", "/api/messages/?q=-invoice", "/api/messages/?sender=in"]
)
def test_a_search_past_its_time_limit_is_a_400_that_says_how_to_narrow_it(
    settings, user_a, tenant_a, inbox_a, path
):
    message(inbox_a, subject="Invoice")
    settings.SEARCH_STATEMENT_TIMEOUT_MS = 200
    client = bearer_client(user_a, tenant_a)
    with table_locked_by_owner():
        response = client.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "search_too_broad"
    assert response.json()["error"]["message"].startswith("The search took too long. Add a word")
    # The request's transaction ended with it: the next one is normal.
    assert client.get(path).status_code == 200


@pytest.mark.usefixtures("committed_db")
def test_a_statement_past_the_timeout_is_a_503_not_a_500(user_a, tenant_a, inbox_a):
    message(inbox_a, subject="Invoice")
    client = bearer_client(user_a, tenant_a)
    with connection.cursor() as cursor:
        cursor.execute(
            "SET statement_timeout = 200"
        )  # the session's, as DATABASE_STATEMENT_TIMEOUT_MS sets it
    with table_locked_by_owner():
        response = client.get(f"/api/messages/?folder={inbox_a.id}")
    assert response.status_code == 503, response.content
    assert response.json() == {
        "error": {
            "code": "statement_timeout",
            "message": "The database took too long to answer; try again later.",
        }
    }
    assert response["Retry-After"] == "5"
    assert client.get(f"/api/messages/?folder={inbox_a.id}").status_code == 200


def test_a_huge_subject_is_stored_and_found_by_its_beginning(db, tenant_a, inbox):
    """A tsvector holds at most 1 MB of lexemes: the trigrams of a subject of
    160,000 distinct CJK characters were 1.26 MB ("string is too long for
    tsvector", the message could not be stored). The trigram vectors cover
    the first 10,000 characters."""
    subject = "".join(chr(19968 + i * 7919 % 20902) + chr(44032 + i * 104729 % 11172) for i in range(80_000))
    message(inbox, subject=subject)
    message(inbox, subject="Something else")
    assert found(tenant_a, f"subject:{subject[100:140]}") == [subject]


# Letters of two bytes in UTF-8 (Greek, Cyrillic, Armenian, Hebrew, Arabic...).
_TWO_BYTE_LETTERS = [chr(c) for c in range(0x370, 0x800) if chr(c).isalpha()]


@pytest.mark.parametrize("field", ["to", "cc"])
def test_a_long_recipient_list_is_stored_by_the_sync(db, settings, tenant_a, inbox, field):
    """300 recipients, each named by 498 non-ASCII letters drawn at random
    (nearly every trigram distinct), 15 to a header (the parser reads 20
    headers of 16 KB of a name: the most it takes): 306 KB of header, over
    the default MAIL_MAX_HEADER_BYTES (256 KB, where 240 such names make
    954 KB of trigrams, just under the limit) but within a raised one. The trigrams of
    the whole list would be over a tsvector's 1 MB ("string is too long for
    tsvector", failing the sync's whole batch); the recipients' trigram
    vectors hold their first 10,000 characters, so the row is stored
    through the sync's COPY."""
    import random

    from mailboxes.imap.responses import FetchedMessage
    from mailboxes.sync.storage import copy_rows, message_row
    from messages.parsing import parse_limits, parse_message

    settings.MAIL_MAX_HEADER_BYTES = 512 * 1024
    rng = random.Random(14)
    recipients = [
        f'"{"".join(rng.choices(_TWO_BYTE_LETTERS, k=498))}" <r{n}@example.com>' for n in range(300)
    ]
    header_name = field.capitalize()
    lines = [
        f"{header_name}: " + ",\r\n ".join(recipients[i : i + 15]) for i in range(0, len(recipients), 15)
    ]
    raw = "\r\n".join(
        [
            "From: a@example.com",
            *lines,
            "Subject: many recipients",
            "Message-ID: <many@example.com>",
            "",
            "hi",
            "",
        ]
    ).encode()
    parsed = parse_message(raw, parse_limits())
    assert len(getattr(parsed, field)) == 300
    item = FetchedMessage(uid=1, flags=(), internal_date=None, size=len(raw), modseq=None)
    row = message_row(tenant_a.id, inbox.account_id, inbox, item, parsed, "k" * 64, size=len(raw))
    with transaction.atomic(), tenant_scope(tenant_a.id):
        copy_rows(Message, [row])
    with tenant_scope(tenant_a.id), connection.cursor() as cursor:
        stored = Message.objects.for_tenant(tenant_a).get(id=row.id)
        assert len(getattr(stored, field)) == 300
        # Unbounded, the vector would not fit:
        unbounded = f"SELECT array_to_tsvector(show_trgm({field}_text)) FROM email_messages WHERE id = %s"  # noqa: S608
        with pytest.raises(OperationalError, match="string is too long for tsvector"), transaction.atomic():
            cursor.execute(unbounded, [row.id])
    assert found(tenant_a, f"{field}:r0@example.com") == ["many recipients"]
