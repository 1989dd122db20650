import datetime
import math

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import exceptions, pagination


def invalid_cursor() -> exceptions.ValidationError:
    return exceptions.ValidationError({"cursor": ["Invalid cursor."]})


class CursorPagination(pagination.CursorPagination):
    """Keyset pagination: page 1,000 costs what page 1 costs.

    A cursor is the client's to send back, so it is input like any other: one
    that does not decode (DRF answers it with a 404), or whose position is
    not a value of the ordering's column as PostgreSQL takes it (a NUL in a
    text, an infinite rank, a date with an offset PostgreSQL refuses, which
    reached the query as a 500), is a 400 on the `cursor` field."""

    ordering = "-created_at"
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
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

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model  # decode_cursor() reads the ordering's column from it
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            raise invalid_cursor() from None
        if cursor is None or cursor.position is None:
            return cursor
        return cursor._replace(position=self._checked_position(cursor.position))

    def _checked_position(self, position: str) -> str:
        name = self.ordering[0].lstrip("-")
        try:
            field = self._model._meta.get_field(name)
        except FieldDoesNotExist:  # an annotation: a search's rank
            field = models.FloatField()
        try:
            value = field.to_python(position)
        except DjangoValidationError:
            raise invalid_cursor() from None
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                raise invalid_cursor()
            try:
                return value.astimezone(datetime.UTC).isoformat()
            except OverflowError:
                raise invalid_cursor() from None
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid_cursor()
        if "\x00" in str(value):
            raise invalid_cursor()
        return position
