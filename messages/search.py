"""The mail search language, and its translation into a queryset filter.

    invoice "quarterly report" from:bob -in:trash after:2024-01-01 is:unread

Syntax
------
A query is terms separated by white space; every term must hold (AND).

* ``word`` and ``"a phrase"``: full-text search of subject, sender and body
  (the weighted `Message.search_vector`, 'english' configuration, so
  ``invoices`` finds "invoice"). Stop words alone ("the") and pure punctuation
  match nothing; inside a longer query they are ignored. Messages the indexer
  has not reached yet (NULL vector) are not found by words.
* ``from:x``: sender address or name contains x; ``to:x``, ``cc:x``: a
  recipient's address or name contains x; ``subject:x``: the subject contains
  x. Case-insensitive substrings, taken literally (``%``, ``_`` and ``\\`` are
  plain characters). A whole address (``from:bob@example.com``: one ``@``, a
  dot in the domain, no spaces) is the sender's or a recipient's address
  itself, case-insensitive, as in Gmail: not ``jimbob@example.com``, not a
  name.
* ``has:attachment`` (or ``attachments``), ``is:unread``, ``is:read``,
  ``is:flagged`` (alias ``is:starred``).
* ``in:x``: x is a folder type (inbox, sent, drafts, trash, spam, archive),
  else a folder's full name, case-insensitive (``in:"INBOX/Project X"``).
* ``after:YYYY-MM-DD``: received on or after that day; ``before:YYYY-MM-DD``:
  received before that day. Days start at 00:00 UTC, so ``after:D before:E``
  is the half-open range [D, E) and ``after:2024-03-01 before:2024-03-02`` is
  the 1st of March (as in Gmail).
* ``account:x``: x is an account's e-mail address (case-insensitive) or its id.
* ``-term`` negates any term: ``-from:bob``, ``-"exact phrase"``, ``-is:read``.
  A ``-`` followed by a space or another ``-`` is an ordinary word (with
  nothing to index), so "budget - draft" and "--" are not errors.

Operator names and the values of ``is:``, ``has:`` and the folder types are
case-insensitive. Any operator's value may be quoted: ``subject:"big news"``.
Quotes have no escapes: a phrase cannot contain ``"``; a quote inside a bare
word starts a new term (``foo"bar"`` is ``foo`` and ``"bar"``).

A word shaped like an operator (``foo:bar``) with an unknown name is an error
that names the known operators: a typo such as ``form:bob`` should not quietly
search for the text. Two shapes stay free text: URLs (``http://x``, any
``name://``) and a name with nothing after the colon (``Re:``, ``Fwd:``).
Quote anything else to search for it as text: ``"ticket:1234"``.

Refused with a `SearchQueryError` (its message is fit for the user): more than
500 characters or 30 terms, an unclosed quote, empty quotes, a known operator
without a value (``from:`` or ``from: bob``), an unknown operator, an unknown
``is:``/``has:`` value, a malformed or impossible date, an ``account:`` that is
neither an address nor an id, and control characters (NUL and the like).

Translation
-----------
All positive words and phrases make one tsquery (``plainto_tsquery`` and
``phraseto_tsquery`` joined by ``&&``) matched once against the GIN index;
each negated one is its own ``NOT (search_vector @@ ...)``, which unindexed
messages satisfy. A substring operator compiles to ``ILIKE`` (see
`_ILikeContains`); when its value holds three letters or digits in a row,
its candidates (`positive_conditions`) are found by the match of those
trigrams in the field's trigram vector first (`Message.subject_trigrams` and
the like; see `messages.models.Trigrams`): under row-level security only
that match, being LEAKPROOF, can be an index condition, and ILIKE checks
the tenant's candidates. A whole address compiles
to equality with `Message.from_key` or containment in `to_addresses` /
`cc_addresses`, each indexed (trigrams of a whole address are too common to
narrow anything down). Every user value reaches
PostgreSQL as a query parameter; no SQL is assembled from user text and no
``raw`` tsquery is built from it.

The message list's ``sender`` filter is such a substring term too
(`with_sender`; a whole address is a substring there), so it is served the
same way and runs under the search's time limit.

`apply_search()` filters on the query only: it does not hide deleted
messages, nor scope to a tenant, user or account. The caller passes a
queryset already limited to what the user may see (``for_tenant`` and
``is_deleted=False``, or not, for a trash view).
"""

import datetime
import re
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.contrib.postgres import search as pg
from django.db import OperationalError, connection
from django.db.models import DecimalField, F, Q, QuerySet, Value
from django.db.models.functions import Cast, JSONArray, Lower
from django.db.models.lookups import IContains, Lookup

from emailclient.core.exceptions import ApplicationError, is_statement_timeout

from .models import FolderType, Message

MAX_QUERY_LENGTH = 500
MAX_TERMS = 30
ORDERS = ("newest", "relevance")

WORD = "word"
PHRASE = "phrase"
# The message list's `sender` filter, as a term (`with_sender`): the sender's
# address or name contains the value, as `from:` does, but a whole address is
# a substring too. Not an operator of the language.
SENDER = "sender"
OPERATORS = ("from", "to", "cc", "subject", "has", "is", "in", "before", "after", "account")

_IS_VALUES = {"unread": "unread", "read": "read", "flagged": "flagged", "starred": "flagged"}
_HAS_VALUES = {"attachment": "attachment", "attachments": "attachment"}
_FOLDER_TYPES = frozenset(FolderType.values) - {FolderType.CUSTOM}
_OPERATOR_SHAPE = re.compile(r"([A-Za-z]+):(.*)")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_WHOLE_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


class SearchQueryError(ApplicationError, ValueError):
    """The query cannot be parsed; `str(exc)` says why, in words for the user."""

    code = "invalid_search_query"


class SearchTooBroad(SearchQueryError):
    """The search ran past SEARCH_STATEMENT_TIMEOUT_MS: it reads too many rows."""

    code = "search_too_broad"


@contextmanager
def search_time_limit() -> Iterator[None]:
    """Run the block's statements (a search and its page) with the
    statement_timeout SEARCH_STATEMENT_TIMEOUT_MS, for the rest of the
    enclosing transaction (the request's tenant scope), and turn a
    statement it cancels into `SearchTooBroad` (a 400 that says what to do),
    not a 500. This bounds what a search may walk: one of only negated terms,
    or of terms no index serves (`is:read`, `subject:ab`), that matches few
    messages reads the tenant's messages newest first until it fills a page."""
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                [str(settings.SEARCH_STATEMENT_TIMEOUT_MS)],
            )
    try:
        yield
    except OperationalError as exc:
        if not is_statement_timeout(exc):
            raise
        raise SearchTooBroad(
            "The search took too long. Add a word to look for, or narrow it with from:, to:, subject:,"
            " in:, account: or after:."
        ) from exc


@dataclass(frozen=True, slots=True)
class Term:
    """One condition. `operator` is WORD, PHRASE or one of OPERATORS; `value`
    is canonical: lower-case for is/has/folder types, a date for before/after,
    a UUID or an address for account, else the text as the user wrote it."""

    operator: str
    value: str | datetime.date | uuid.UUID
    negated: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed query: its terms, all of which must hold."""

    terms: tuple[Term, ...] = ()


# --- Parsing --------------------------------------------------------------------


def parse_search_query(text: str) -> SearchQuery:
    """Parse the search box's text; raises SearchQueryError on malformed input."""
    if len(text) > MAX_QUERY_LENGTH:
        raise SearchQueryError(f"The search is too long: at most {MAX_QUERY_LENGTH} characters.")
    for position, char in enumerate(text, start=1):
        if unicodedata.category(char) in ("Cc", "Cs") and not char.isspace():
            raise SearchQueryError(f"The search contains a control character (at character {position}).")

    terms = []
    i, end = 0, len(text)
    while i < end:
        if text[i].isspace():
            i += 1
            continue
        negated = text[i] == "-" and i + 1 < end and not text[i + 1].isspace() and text[i + 1] != "-"
        if negated:
            i += 1
        term, i = _read_term(text, i, negated)
        terms.append(term)
        if len(terms) > MAX_TERMS:
            raise SearchQueryError(f"The search has too many terms: at most {MAX_TERMS}.")
    return SearchQuery(terms=tuple(terms))


def _read_term(text: str, start: int, negated: bool) -> tuple[Term, int]:
    """The term at `start` and the index just past it."""
    if text[start] == '"':
        phrase, i = _read_quoted(text, start)
        if not phrase.strip():
            raise SearchQueryError(
                'Empty quotes: put the words to search for between them, as in "some words".'
            )
        return Term(PHRASE, phrase, negated), i

    i = start
    while i < len(text) and not text[i].isspace() and text[i] != '"':
        i += 1
    run = text[start:i]
    shape = _OPERATOR_SHAPE.fullmatch(run)
    if shape is None:
        return Term(WORD, run, negated), i

    name, value = shape.group(1).lower(), shape.group(2)
    if name not in OPERATORS:
        if not value or value.startswith("//"):  # "Re:", "Fwd:", "https://..."
            return Term(WORD, run, negated), i
        raise SearchQueryError(
            f"Unknown operator {_show(name + ':')}. Known operators: {', '.join(o + ':' for o in OPERATORS)}."
            f" To search for the text itself, put it in quotes: {_show(run)}."
        )
    if not value and i < len(text) and text[i] == '"':
        value, i = _read_quoted(text, i)
    if not value.strip():
        raise SearchQueryError(
            f"{name}: needs a value right after the colon, with no space: {name}:something,"
            f' or {name}:"some words".'
        )
    return Term(name, _clean_value(name, value), negated), i


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """The text between the quote at `start` and the next one, and the index past it."""
    close = text.find('"', start + 1)
    if close == -1:
        raise SearchQueryError(f'Unbalanced quote: the " at character {start + 1} is never closed.')
    return text[start + 1 : close], close + 1


def _clean_value(name: str, value: str) -> str | datetime.date | uuid.UUID:
    if name == "is":
        if value.lower() not in _IS_VALUES:
            raise SearchQueryError(f"Unknown is: value {_show(value)}. Use is:unread, is:read or is:flagged.")
        return _IS_VALUES[value.lower()]
    if name == "has":
        if value.lower() not in _HAS_VALUES:
            raise SearchQueryError(f"Unknown has: value {_show(value)}. Use has:attachment.")
        return _HAS_VALUES[value.lower()]
    if name == "in":
        return value.lower() if value.lower() in _FOLDER_TYPES else value
    if name in ("before", "after"):
        return _parse_date(name, value)
    if name == "account":
        return _parse_account(value)
    return value


def _parse_date(name: str, value: str) -> datetime.date:
    if not _DATE.fullmatch(value):
        raise SearchQueryError(
            f"{name}: takes a date as YYYY-MM-DD, e.g. {name}:2024-03-31, not {_show(value)}."
        )
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise SearchQueryError(f"{name}:{value} is not a date of the calendar.") from None


def _parse_account(value: str) -> str | uuid.UUID:
    if "@" in value:
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise SearchQueryError(
            f"account: takes an account's e-mail address or id, not {_show(value)}."
        ) from None


def _show(value: str, limit: int = 40) -> str:
    """User text quoted for an error message, cut short."""
    return '"' + (value if len(value) <= limit else value[: limit - 1] + "…") + '"'


# --- Translation ----------------------------------------------------------------


class _ILikeContains(IContains):
    """`lhs ILIKE '%value%'`: the substring match a pg_trgm GIN index on the
    bare column serves. Django's own `icontains` compiles to
    `UPPER(lhs) LIKE UPPER(...)`, which such an index cannot. The value is
    still escaped by Django (`%`, `_` and `\\` match themselves) and sent as a
    parameter; only the operator differs. Used as an expression, never
    registered, so no other `icontains` changes."""

    def process_lhs(self, compiler: Any, connection: Any, lhs: Any = None) -> tuple[str, list[Any]]:
        sql, params = Lookup.process_lhs(self, compiler, connection, lhs)  # without UPPER()
        return sql, list(params)

    def get_rhs_op(self, connection: Any, rhs: str) -> str:
        return f"ILIKE {rhs}"


class _TsMatch(Lookup):  # type: ignore[type-arg]
    """`lhs @@ rhs::tsquery`, the tsquery given as its text (no parser, no
    dictionary): the operator is ts_match_vq, LEAKPROOF, so an index condition
    under row-level security. Used as an expression, never registered."""

    lookup_name = "tsquery_match"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} @@ {rhs}::tsquery", [*lhs_params, *rhs_params]


# Runs of ASCII letters and digits: whatever the database's locale, such a
# run lies inside one pg_trgm word of any text that contains it, so each of
# its three-character windows, lower-cased, is one of that text's trigrams.
_TRIGRAM_RUN = re.compile(r"[A-Za-z0-9]{3,}")
# Enough to narrow any substring down; more only lengthens the index lookup.
MAX_TRIGRAMS = 16


def substring_trigrams(value: str) -> list[str]:
    """Trigrams that every text containing `value` (case-insensitively) has
    in its `Trigrams` vector; none for a value without three ASCII letters
    or digits in a row. At most MAX_TRIGRAMS, the first ones."""
    found: dict[str, None] = {}
    for run in _TRIGRAM_RUN.findall(value):
        lowered = run.lower()
        for i in range(len(lowered) - 2):
            found.setdefault(lowered[i : i + 3])
    return list(found)[:MAX_TRIGRAMS]


def _contains(value: str, *fields: str) -> Q:
    """Any of `fields` contains `value` (ILIKE)."""
    condition = Q()
    for field in fields:
        condition |= Q(_ILikeContains(F(field), value))
    return condition


# A substring operator's fields, and the trigram vector its candidates are found by.
_SUBSTRING_FIELDS = {
    "from": ("from_trigrams", ("from_address", "from_name")),
    SENDER: ("from_trigrams", ("from_address", "from_name")),
    "to": ("to_trigrams", ("to_text",)),
    "cc": ("cc_trigrams", ("cc_text",)),
    "subject": ("subject_trigrams", ("subject",)),
}


def _trigram_candidates(term: Term) -> Q | None:
    """For a substring term whose value has trigrams: its condition with the
    trigram match first, which the field's GIN index serves under RLS."""
    if term.operator not in _SUBSTRING_FIELDS or not isinstance(term.value, str):
        return None
    if term.operator in ("from", "to", "cc") and _is_whole_address(term.value):
        return None
    trigrams = substring_trigrams(term.value)
    if not trigrams:
        return None
    trigrams_field, fields = _SUBSTRING_FIELDS[term.operator]
    # Only [a-z0-9] in each trigram: nothing to quote inside the quotes.
    tsquery = " & ".join(f"'{trigram}'" for trigram in trigrams)
    return Q(_TsMatch(F(trigrams_field), tsquery)) & _contains(term.value, *fields)


def _day_start(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)


def _operator_filter(term: Term) -> Q:
    value = term.value
    if isinstance(value, datetime.date):  # after:, before:
        if term.operator == "after":
            return Q(received_at__gte=_day_start(value))
        return Q(received_at__lt=_day_start(value))
    if isinstance(value, uuid.UUID):  # account: by id
        return Q(account_id=value)
    match term.operator:
        case "from" if _is_whole_address(value):
            return Q(from_key=Lower(Value(value)))
        case "to" | "cc" if _is_whole_address(value):
            return Q(**{f"{term.operator}_addresses__contains": JSONArray(Lower(Value(value)))})
        case "from" | "to" | "cc" | "subject" | "sender":
            return _contains(value, *_SUBSTRING_FIELDS[term.operator][1])
        case "has":
            return Q(has_attachments=True)
        case "is":
            return {"unread": Q(is_read=False), "read": Q(is_read=True), "flagged": Q(is_flagged=True)}[value]
        case "in":
            return Q(folder__type=value) if value in _FOLDER_TYPES else Q(folder__name__iexact=value)
        case "account":
            return Q(account__email_address__iexact=value)
    raise AssertionError(f"no filter for {term.operator}")


def search_filter(query: SearchQuery) -> tuple[Q, pg.SearchQuery | None]:
    """The condition the query puts on messages, and the tsquery of its
    positive words and phrases (for ranking; None when it has none)."""
    condition = Q()
    for part in [
        *_negated_conditions(query),
        *(c.estimate or c.condition for c in positive_conditions(query)),
    ]:
        condition &= part
    return condition, _text(query)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A condition every match of a query satisfies. `keyed`: an exact key
    (a whole address in `to:` or `cc:`) that usually holds for few rows,
    whatever ANALYZE's sample made the planner guess. `estimate`: the same
    condition as the query itself puts it, when `condition` adds an index's
    way in (a substring's trigram match): the planner guesses the row count
    from it, and pages the query by it.

    Why apart: the planner multiplies the frequencies of a tsquery's
    trigrams as if they were independent ("smith": 3 rows expected, 4,472
    found at 100,000 messages), so with the trigram match in the query it
    sorted every match of a common substring instead of walking to a page
    (172 ms, not 43). The trigram match serves only to fetch a rare
    substring's candidates by id (`selectors.narrow_to_candidate_ids`)."""

    condition: Q
    keyed: bool = False
    estimate: Q | None = None


def positive_conditions(query: SearchQuery) -> list[Candidate]:
    """The query's conditions that select rather than exclude (each positive
    operator, its words and phrases as one): where to look for candidates."""
    conditions = []
    for t in query.terms:
        if t.operator in (WORD, PHRASE) or t.negated:
            continue
        keyed = t.operator in ("to", "cc") and _is_whole_address(t.value)
        by_trigrams = _trigram_candidates(t)
        if by_trigrams is None:
            conditions.append(Candidate(_operator_filter(t), keyed=keyed))
        else:
            conditions.append(Candidate(by_trigrams, keyed=keyed, estimate=_operator_filter(t)))
    text = _text(query)
    if text is not None:
        conditions.append(Candidate(Q(search_vector=text)))
    return conditions


def with_sender(query: SearchQuery | None, sender: str) -> SearchQuery:
    """`query` (or no query) and the message list's `sender` filter: the
    sender's address or name contains `sender`, case-insensitively. As a
    term of the search it is compiled as `from:` is (the trigram match
    fetches a rare value's candidates, ILIKE checks them), so that under
    row-level security an index serves it: as `UPPER(from_address) LIKE ...`
    on its own it read every message of the tenant (4.7 s at 100,000)."""
    terms = query.terms if query is not None else ()
    return SearchQuery(terms=(*terms, Term(SENDER, sender)))


def _is_whole_address(value: object) -> bool:
    return isinstance(value, str) and _WHOLE_ADDRESS.fullmatch(value) is not None


def _negated_conditions(query: SearchQuery) -> list[Q]:
    """Each negated word, phrase or operator, as its own NOT (...)."""
    return [
        ~(Q(search_vector=_tsquery(t)) if t.operator in (WORD, PHRASE) else _operator_filter(t))
        for t in query.terms
        if t.negated
    ]


def _text(query: SearchQuery) -> pg.SearchQuery | None:
    """The positive words and phrases as one tsquery (None without any)."""
    text = None
    for term in query.terms:
        if term.operator in (WORD, PHRASE) and not term.negated:
            tsquery = _tsquery(term)
            text = tsquery if text is None else text & tsquery
    return text


def _tsquery(term: Term) -> pg.SearchQuery:
    search_type = "phrase" if term.operator == PHRASE else "plain"
    return pg.SearchQuery(str(term.value), search_type=search_type, config="english")


# The orders a search's results come in.
SearchOrder = Literal["newest", "relevance"]


def apply_search(
    queryset: QuerySet[Message], query: SearchQuery, *, order: SearchOrder = "newest"
) -> QuerySet[Message]:
    """`queryset` narrowed to the query's matches, in `order`: "newest"
    (received_at, then id, descending, as the folder view) or "relevance"
    (ts_rank of the words and phrases, a subject hit above a sender hit above
    a body hit, then newest; a query without positive words or phrases has no
    relevance and comes newest first)."""
    if order not in ORDERS:
        raise SearchQueryError(f"Unknown order {_show(str(order))}: use {' or '.join(ORDERS)}.")
    condition, text = search_filter(query)
    queryset = queryset.filter(condition)
    if order == "relevance" and text is not None:
        # Annotated as `rank`, so that a cursor can page by it: a decimal,
        # since ts_rank's float4 does not survive a round trip through text.
        rank = Cast(pg.SearchRank(F("search_vector"), text), DecimalField(max_digits=14, decimal_places=10))
        queryset = queryset.annotate(rank=rank)
        return queryset.order_by("-rank", "-received_at", "-id")
    return queryset.order_by("-received_at", "-id")
