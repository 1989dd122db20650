"""Keyset pagination over a list's whole ordering.

A page is the rows after (or before) the last one the client saw, compared
as a row value over every ordering key: `(received_at, id) < (%s, %s)`.
PostgreSQL serves that from an index whose columns are the keys, so page
1,000 costs what page 1 costs, and rows that tie on the first key are
paged like any others. (DRF's `CursorPagination` keys on the first field
only and pages ties by an offset it caps at 1,000: past that, `next` gave
the same page forever.)

A cursor is base64url of a small JSON object, `{"after": [...]}` or
`{"before": [...]}`, holding one value per key. It is the client's to send
back, so it is checked like any input: a cursor that does not decode, or
whose values are not values of the keys' columns as PostgreSQL takes them
(a NUL in a text, an infinite number, a date with an offset PostgreSQL
refuses), is a 400 on the `cursor` field.
"""

import base64
import binascii
import datetime
import decimal
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar, cast

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Expression, F, Q, QuerySet, Value
from django.db.models.sql.compiler import SQLCompiler
from rest_framework import exceptions, pagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

# A cursor holds a row's keys, a folder's whole name among them (UTF-8 in the
# JSON, so a non-Latin name costs two or three bytes a character, then base64).
MAX_CURSOR_LENGTH = 8_192

_M = TypeVar("_M", bound=models.Model)
_Row = TypeVar("_Row")


# A cursor's key: (backwards, inclusive).
CURSOR_DIRECTIONS = {
    "after": (False, False),
    "from": (False, True),
    "before": (True, False),
    "through": (True, True),
}


def invalid_cursor() -> exceptions.ValidationError:
    return exceptions.ValidationError({"cursor": ["Invalid cursor."]})


class RowCompare(Expression):
    """`(a, b, c) < (x, y, z)`: a row-value comparison, which a B-tree index on
    (a, b, c), in either direction, serves as one range."""

    output_field = models.BooleanField()
    conditional = True

    def __init__(self, keys: Sequence[Any], values: Sequence[Value], operator: str) -> None:
        super().__init__()
        if operator not in {"<", ">", "<=", ">="} or len(keys) != len(values) or not keys:
            raise ValueError("RowCompare takes as many keys as values and <, >, <= or >=")
        self.keys: list[Any] = [F(key) if isinstance(key, str) else key for key in keys]
        self.values = list(values)
        self.operator = operator

    def get_source_expressions(self) -> list[Any]:
        return [*self.keys, *self.values]

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        self.keys, self.values = list(exprs[: len(self.keys)]), list(exprs[len(self.keys) :])

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        sides: list[str]
        params: list[Any]
        sides, params = [], []
        for side in (self.keys, self.values):
            parts = []
            for expression in side:
                sql, part_params = compiler.compile(expression)
                parts.append(sql)
                params.extend(part_params)
            sides.append(", ".join(parts))
        return f"({sides[0]}) {self.operator} ({sides[1]})", params


def rows_past(
    keys: Sequence[str],
    position: Sequence[Any],
    fields: Sequence["models.Field[Any, Any]"],
    *,
    downwards: bool,
    inclusive: bool = False,
) -> Q:
    """The rows that come after `position` (a value per key; with `inclusive`,
    from it on) in the order of `keys`, all descending (`downwards`) or all
    ascending, the last key unique. PostgreSQL sorts NULLs first going down
    and last going up; so do these conditions.

    The common case is one row-value comparison, which an index on the keys
    serves as one range. A row value stops at its first NULL pair, so it
    serves only where that is right: no NULL in the position, and going down
    (rows with an equal prefix and a NULL come first: excluded, as they
    should be) or with no NULL in any key but the first. Anything else is
    spelled out key by key."""
    values = [Value(v, output_field=f) for v, f in zip(position, fields, strict=True)]
    operator = ("<" if downwards else ">") + ("=" if inclusive else "")
    first_nullable, later_nullable = fields[0].null, any(f.null for f in fields[1:])
    if None not in position and (downwards or not later_nullable):
        after = Q(RowCompare(keys, values, operator))
        if not downwards and first_nullable:
            after |= Q(**{f"{keys[0]}__isnull": True})
        return after
    return _rows_past_by_key(keys, position, values, downwards=downwards, inclusive=inclusive)


def _rows_past_by_key(
    keys: Sequence[str], position: Sequence[Any], values: Sequence[Value], *, downwards: bool, inclusive: bool
) -> Q:
    """`rows_past()` as a lexicographic OR: equal on the first i keys and past
    the position on the next, for each i."""

    def equal(key: str, value: Any, expression: Value) -> Q:
        return Q(**{f"{key}__isnull": True}) if value is None else Q(**{key: expression})

    def past(key: str, value: Any, expression: Value) -> Q:
        if value is None:  # NULLs first going down: every non-NULL is past; going up, none is
            return Q(**{f"{key}__isnull": False}) if downwards else Q(pk__in=[])
        beyond = Q(**{f"{key}__{'lt' if downwards else 'gt'}": expression})
        return beyond if downwards else beyond | Q(**{f"{key}__isnull": True})

    condition, prefix = Q(pk__in=[]), Q()
    for key, value, expression in zip(keys, position, values, strict=True):
        condition |= prefix & past(key, value, expression)
        prefix &= equal(key, value, expression)
    return condition | prefix if inclusive else condition


class KeysetPagination(pagination.BasePagination):
    """Pages a queryset by `ordering`: every key descending (`-received_at`,
    `-id`) or every key ascending, the last one unique (the primary key).
    Keys may be NULL (a message without a date); PostgreSQL sorts NULLs
    first in a descending order and last in an ascending one, and so do the
    cursors.

    Items may be model instances or dicts (`values()` rows with the keys)."""

    ordering: tuple[str, ...] = ("-created_at", "-id")
    page_size = cast(int, api_settings.PAGE_SIZE)  # set in REST_FRAMEWORK
    page_size_query_param = "page_size"
    max_page_size = 200
    cursor_query_param = "cursor"

    # Set by paginate_queryset() for the links.
    request: Request
    base_url: str
    keys: list[str]
    descending: bool
    fields: list["models.Field[Any, Any]"]
    next_position: list[Any] | None
    previous_position: list[Any] | None
    links_inclusive: bool

    def get_page_size(self, request: Request) -> int:
        """`page_size` from 1 to `max_page_size`; anything else is a 400 (DRF
        quietly used the default for `x` or `0` and the maximum above it)."""
        value = request.query_params.get(self.page_size_query_param, "")
        if value == "":  # as a serializer's IntegerField takes it: not given
            return self.page_size
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]}
            )
        return size

    # --- the page -------------------------------------------------------------------

    def paginate_queryset(
        self, queryset: QuerySet[_M, _Row], request: Request, view: APIView | None = None
    ) -> list[_Row]:
        self.request = request
        self.base_url = request.build_absolute_uri()
        self.keys = [key.lstrip("-") for key in self.ordering]
        self.descending = self.ordering[0].startswith("-")
        if any(key.startswith("-") != self.descending for key in self.ordering):
            raise ValueError("Keyset ordering keys must all go the same way")
        self.fields = [self._field(queryset, key) for key in self.keys]
        size = self.get_page_size(request)
        backwards, position, inclusive = self.decode_cursor(request)

        # Walking backwards is walking the reversed order forwards.
        downwards = self.descending != backwards
        rows = queryset.order_by(*(f"-{key}" if downwards else key for key in self.keys))
        if position is not None:
            rows = rows.filter(
                rows_past(self.keys, position, self.fields, downwards=downwards, inclusive=inclusive)
            )
        page = list(rows[: size + 1])
        more = len(page) > size
        page = page[:size]
        if backwards:
            page.reverse()

        # Forwards, there is a previous page if we came from somewhere; backwards, a next one.
        # An empty page's links start from its cursor's row itself (it may
        # have gone since), so that row is not skipped on the way back.
        self.next_position = self.previous_position = None
        self.links_inclusive = not page
        first = self._position(page[0]) if page else position
        last = self._position(page[-1]) if page else position
        if more if not backwards else position is not None:
            self.next_position = last
        if more if backwards else position is not None:
            self.previous_position = first
        return page

    def _position(self, item: Any) -> list[Any]:
        get = item.__getitem__ if isinstance(item, dict) else lambda key: getattr(item, key)
        return [get(key) for key in self.keys]

    @staticmethod
    def _field(queryset: QuerySet[Any, Any], key: str) -> "models.Field[Any, Any]":
        field: models.Field[Any, Any]
        try:
            field = queryset.model._meta.get_field(key)
        except FieldDoesNotExist:  # an annotation, such as a search's rank
            field = queryset.query.annotations[key].output_field
        return field

    # --- the response ---------------------------------------------------------------

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self.get_next_link(), "previous": self.get_previous_link(), "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "required": ["results"],
            "properties": {"next": link, "previous": link, "results": schema},
        }

    def get_next_link(self) -> str | None:
        return self._link("after", self.next_position)

    def get_previous_link(self) -> str | None:
        return self._link("before", self.previous_position)

    def _link(self, direction: str, position: list[Any] | None) -> str | None:
        if position is None:
            return None
        cursor = self.encode_cursor(direction, position, inclusive=self.links_inclusive)
        return replace_query_param(self.base_url, self.cursor_query_param, cursor)

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "The `next` or `previous` link's cursor.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Items per page, 1 to {self.max_page_size} (default {self.page_size}).",
                "schema": {"type": "integer"},
            },
        ]

    # --- cursors ----------------------------------------------------------------------

    def encode_cursor(self, direction: str, position: list[Any], *, inclusive: bool = False) -> str:
        """`{"after": [...]}`, `{"before": [...]}`; `{"from": [...]}` and
        `{"through": [...]}` include the row at the position."""
        if inclusive:
            direction = {"after": "from", "before": "through"}[direction]
        body = json.dumps(
            {direction: [_dumpable(v) for v in position]}, separators=(",", ":"), ensure_ascii=False
        )
        return base64.urlsafe_b64encode(body.encode()).decode("ascii")

    def decode_cursor(self, request: Request) -> tuple[bool, list[Any] | None, bool]:
        """(backwards, position, inclusive), or (False, None, False) without a cursor."""
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return False, None, False
        if len(encoded) > MAX_CURSOR_LENGTH:
            raise invalid_cursor()
        try:
            body = json.loads(base64.urlsafe_b64decode(encoded.encode("ascii")))
        except (ValueError, UnicodeError, binascii.Error, RecursionError):
            raise invalid_cursor() from None
        if not isinstance(body, dict) or len(body) != 1:
            raise invalid_cursor()
        [(direction, values)] = body.items()
        if direction not in CURSOR_DIRECTIONS or not isinstance(values, list):
            raise invalid_cursor()
        if len(values) != len(self.keys):
            raise invalid_cursor()
        position = [self._checked(value, field) for value, field in zip(values, self.fields, strict=True)]
        backwards, inclusive = CURSOR_DIRECTIONS[direction]
        return backwards, position, inclusive

    def _checked(self, value: Any, field: "models.Field[Any, Any]") -> Any:
        """`value` as the key's column takes it, or a 400."""
        if value is None:
            if field.null:
                return None
            raise invalid_cursor()
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise invalid_cursor()
        if isinstance(value, str):
            if "\x00" in value:  # PostgreSQL refuses NUL in text
                raise invalid_cursor()
            try:  # and a lone surrogate is no UTF-8 at all
                value.encode()
            except UnicodeEncodeError:
                raise invalid_cursor() from None
        try:
            value = field.to_python(value)
        except (DjangoValidationError, TypeError, ValueError, decimal.InvalidOperation):
            raise invalid_cursor() from None
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                raise invalid_cursor()
            try:  # in UTC: PostgreSQL refuses offsets past 15:59, Python not
                value = value.astimezone(datetime.UTC)
            except OverflowError:
                raise invalid_cursor() from None
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid_cursor()
        try:
            field.run_validators(value)  # a decimal's digits, a text's length
        except DjangoValidationError:
            raise invalid_cursor() from None
        return value


def _dumpable(value: Any) -> Any:
    """A key's value as JSON keeps it exactly: dates in UTC with microseconds,
    decimals and UUIDs as text."""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    return value
