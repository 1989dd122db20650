"""API routes that answer the same with and without a trailing slash.

Clients often write paths without one (`POST /api/accounts`), Django and
DRF's routers with one. Every API route matches both forms itself, so
`CommonMiddleware`'s APPEND_SLASH never redirects an API request (a 301
that drops a POST's body, or the `RuntimeError` it raises under DEBUG).

`reverse()` gives the form without the slash (`django.utils.regex_helper`
reads `/?` as absent), and so does the OpenAPI schema
(`emailclient.core.schema.drop_trailing_slash`).
"""

from django.urls import URLPattern
from django.urls.resolvers import RoutePattern
from rest_framework.routers import SimpleRouter

OPTIONAL_SLASH = "/?"


class OptionalSlashRoutePattern(RoutePattern):
    """A `path()` route whose trailing slash is optional: `"sync/imap/<uuid:id>"`
    matches `sync/imap/{id}` and `sync/imap/{id}/`. Its `str()` (what the
    schema generator reads) is the route without the slash."""

    _regex: str  # set by RoutePattern.__init__ (private: not in django-stubs)

    def __init__(self, route: str, name: str | None = None, is_endpoint: bool = False):
        if not isinstance(route, str):
            # A lazily translated route is compiled again per language, from
            # the route alone, which would lose the optional slash.
            raise TypeError("An optional-slash route must be a plain str.")
        if is_endpoint:
            route = route.rstrip("/")
        super().__init__(route, name=name, is_endpoint=is_endpoint)
        if is_endpoint:
            self._regex = self._regex.removesuffix(r"\Z") + OPTIONAL_SLASH + r"\Z"


def api_path(route: str, view, kwargs: dict | None = None, name: str | None = None) -> URLPattern:
    """`django.urls.path()` for one API view, its trailing slash optional."""
    if not callable(view):
        raise TypeError("api_path() takes a view; use path() with include() for a prefix.")
    return URLPattern(OptionalSlashRoutePattern(route, name=name, is_endpoint=True), view, kwargs, name)


class ApiRouter(SimpleRouter):
    """DRF's `SimpleRouter`, every route's trailing slash optional."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trailing_slash = OPTIONAL_SLASH
