from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, pagination

INVALID_CURSOR = {"cursor": ["Invalid cursor."]}


class CursorPagination(pagination.CursorPagination):
    """Keyset pagination: page 1,000 costs what page 1 costs. A cursor that
    does not decode, or whose position is not a value of the ordering's
    column, is a 400 on the `cursor` field (DRF answers the first with a
    404 and the second reached the query as an error of its own)."""

    ordering = "-created_at"
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError(INVALID_CURSOR) from None

    def paginate_queryset(self, queryset, request, view=None):
        try:
            return super().paginate_queryset(queryset, request, view)
        except DjangoValidationError:
            raise exceptions.ValidationError(INVALID_CURSOR) from None
