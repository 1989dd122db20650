"""The compose API: drafts, uploads, sending and the outbox.

Every item is the user's own (compose is personal, `compose.selectors`);
another user's or tenant's item is a 404. The send endpoints honour an
`Idempotency-Key` header (`compose.idempotency`) and are rate limited per
user and per tenant (COMPOSE_RATE_LIMIT_USER, COMPOSE_RATE_LIMIT_TENANT, or
the tenant's own `compose_rate_limit_*`: 429 with Retry-After). Only a send
that is queued counts: a request refused (400, 404, 409, 429) counts
against no limit, so one member's refusals do not use up the tenant's. A
request replayed by its key is answered before the limits are looked at:
it sends nothing.
"""

import re
import uuid
from collections.abc import Callable
from typing import IO, Any, cast

from django.contrib.auth.models import User
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from emailclient.core.api import TenantAPIMixin
from emailclient.core.exceptions import NotFound
from emailclient.core.limits import tenant_limit
from emailclient.core.pagination import KeysetPagination
from emailclient.core.schema import TENANT_HEADER
from emailclient.core.throttling import rate_limits_check, rate_limits_hit

from . import idempotency, selectors, services
from .models import Draft
from .serializers import (
    AttachmentUploadSerializer,
    DraftAttachmentSerializer,
    DraftFilterSerializer,
    DraftInputSerializer,
    DraftSaveSerializer,
    DraftSerializer,
)

UUID_PATTERN = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

IDEMPOTENCY_HEADER = OpenApiParameter(
    idempotency.HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description=(
        "Makes the request safe to retry for 24 hours: the same key with the same body answers with "
        "the first result (nothing is sent twice); with another body, 422."
    ),
)
ATTACHMENT_ID = OpenApiParameter("attachment_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
SEND_RESPONSES = {
    202: DraftSerializer,
    400: OpenApiResponse(description="Invalid, no recipient, over a limit, or no SMTP server."),
    409: OpenApiResponse(description="The item is not in a state that may be sent."),
    422: OpenApiResponse(description="The Idempotency-Key was used for another request."),
    429: OpenApiResponse(description="Too many sends; see Retry-After."),
}


def _limits(request: Request) -> list[tuple[str, str, str]]:
    """(group, key, rate): the user's limit first, then the tenant's; the
    tenant's own limits when an operator set them (`tenant_limit`)."""
    tenant = request._request.tenant  # type: ignore[attr-defined]  # set by TenantMiddleware
    return [
        ("compose.send.user", str(request.user.pk), tenant_limit(tenant, "compose_rate_limit_user")),
        ("compose.send.tenant", str(tenant.id), tenant_limit(tenant, "compose_rate_limit_tenant")),
    ]


def send_rate_limit_check(request: Request) -> None:
    """Before a send: 429 when the user's or the tenant's limit is used up
    (with the seconds to the end of that window). Counts nothing."""
    rate_limits_check(limits=_limits(request))


def send_rate_limit_count(request: Request) -> None:
    """After a send was queued (in the request's transaction): count it
    against the user's limit, then the tenant's. Sends running at once may
    all have passed the check; one that finds a limit passed now is a 429
    and its transaction rolls back (the middleware rolls back every error
    answer). It stays counted only against the limits it reached: its user's,
    not the tenant's, when the user's is the one over."""
    rate_limits_hit(limits=_limits(request))


# What a multipart request may carry besides its file: boundaries, part
# headers, the `filename` field.
MULTIPART_OVERHEAD = 64 * 1024


class BoundedUploadHandler(FileUploadHandler):
    """First of the request's upload handlers: the files of the request may
    have `limit` bytes together. A Content-Length over that (and the
    multipart overhead) is refused before any of the body is read; files
    that turn out longer are counted as they arrive and the upload stops
    there, so nothing past the limit is kept in memory or spooled to disk.
    `exceeded` tells the view to answer 413."""

    def __init__(self, request: HttpRequest, *, limit: int):
        super().__init__(request)
        self.limit = limit
        self.received = 0
        self.exceeded = False

    def handle_raw_input(
        self,
        input_data: IO[bytes],
        META: dict[str, Any],
        content_length: int,
        boundary: str,
        encoding: str | None = None,
    ) -> tuple[QueryDict, MultiValueDict] | None:
        if content_length > self.limit + MULTIPART_OVERHEAD:
            self.exceeded = True
            return QueryDict(), MultiValueDict()  # parsed as empty: the body is not read
        return None

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=False)  # the rest is within the overhead: read, not kept
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


class ComposeSchema(AutoSchema):
    """Three POSTs end in `send`: the item's (`compose/{id}/send`), the
    one-shot (`compose/send`) and the seed's alias of the first
    (`compose/send/{id}`, deprecated). drf-spectacular would give them one
    operationId; they get `..._create`, `..._create_new`, `..._create_alias`."""

    def _is_alias(self) -> bool:
        return re.search(r"/send/\{[^/]+\}$", self.path) is not None

    def get_operation_id(self) -> str:
        operation_id = super().get_operation_id()
        if self._is_alias():
            return f"{operation_id}_alias"
        if getattr(self.view, "action", None) == "send_new":
            return f"{operation_id}_new"
        return operation_id

    def is_deprecated(self) -> bool:
        return self._is_alias() or super().is_deprecated()


class DraftPagination(KeysetPagination):
    ordering = ("-created_at", "-id")


@extend_schema(parameters=[TENANT_HEADER])
class ComposeViewSet(TenantAPIMixin, viewsets.GenericViewSet):
    """The user's drafts and outgoing messages, newest first."""

    serializer_class = DraftSerializer
    pagination_class = DraftPagination
    lookup_value_regex = UUID_PATTERN
    schema = ComposeSchema()

    def get_queryset(self):
        return Draft.objects.none()  # every action builds its own, from the selectors

    # --- helpers ------------------------------------------------------------------

    @property
    def user(self) -> User:
        return cast(User, self.request.user)  # IsAuthenticated: never anonymous here

    def _draft(self, *, lock: bool = False, pk: uuid.UUID | None = None) -> Draft:
        return selectors.access_draft(
            tenant=self.tenant, user=self.user, id=pk or uuid.UUID(str(self.kwargs["pk"])), lock=lock
        )

    def _item(self, draft: Draft, status_code: int = status.HTTP_200_OK) -> Response:
        """The item as it is now, re-read with its outbox and attachments."""
        draft = self._draft(pk=draft.id)
        context = {"sent_messages": selectors.sent_messages(tenant=self.tenant, drafts=[draft])}
        return Response(DraftSerializer(draft, context=context).data, status=status_code)

    def _queued(self, draft: Draft, *, resend: bool) -> Response:
        """A send's answer (202), from the draft `services.draft_send` left
        in memory (its outbox item and attachments with it), not read back:
        the same fields, two queries fewer on every send. Its message in
        Sent is looked for only on a resend (a new Message-ID has none)."""
        sent = selectors.sent_messages(tenant=self.tenant, drafts=[draft]) if resend else {}
        return Response(
            DraftSerializer(draft, context={"sent_messages": sent}).data, status=status.HTTP_202_ACCEPTED
        )

    def _body(self) -> dict:
        data = self.request.data
        if isinstance(data, QueryDict):  # no body at all
            return {}
        return data

    def _idempotent(self, endpoint: str, perform: Callable[[], tuple[Draft, bool]]) -> Response:
        """Run a send (`perform`: the draft, and whether it was a resend) at
        most once per Idempotency-Key, rate limited."""
        request = self.request
        key = request.headers.get(idempotency.HEADER)
        if key is None:
            send_rate_limit_check(request)
            draft, resend = perform()
            send_rate_limit_count(request)
            return self._queued(draft, resend=resend)
        claim = idempotency.idempotency_key_claim(
            tenant=self.tenant,
            user=self.user,
            key=idempotency.key_check(key),
            request_hash=idempotency.request_hash(method="POST", endpoint=endpoint, body=self._body()),
        )
        if isinstance(claim, idempotency.Replay):
            if claim.draft is None:
                raise NotFound("Draft not found.")
            return self._item(claim.draft, claim.status_code)
        send_rate_limit_check(request)
        draft, resend = perform()
        send_rate_limit_count(request)
        idempotency.idempotency_key_record(row=claim, draft=draft, status_code=status.HTTP_202_ACCEPTED)
        return self._queued(draft, resend=resend)

    @staticmethod
    def _valid(serializer_class: type[DraftInputSerializer], data, *, partial: bool = False) -> dict:
        serializer = serializer_class(data=data, partial=partial)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    # --- drafts -------------------------------------------------------------------

    @extend_schema(parameters=[DraftFilterSerializer], responses=DraftSerializer(many=True))
    def list(self, request, **kwargs):
        """Drafts and outbox items; `status` and `account` narrow it."""
        params = DraftFilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        drafts = selectors.draft_list(
            tenant=self.tenant,
            user=self.user,
            status=params.validated_data.get("status"),
            account_id=params.validated_data.get("account"),
        )
        paginator = DraftPagination()
        page = paginator.paginate_queryset(drafts, request, view=self)
        context = {"sent_messages": selectors.sent_messages(tenant=self.tenant, drafts=page)}
        return paginator.get_paginated_response(DraftSerializer(page, many=True, context=context).data)

    @extend_schema(request=DraftInputSerializer, responses={201: DraftSerializer})
    def create(self, request, **kwargs):
        data = self._valid(DraftInputSerializer, request.data)
        draft = services.draft_create(
            tenant=self.tenant, user=self.user, data=data, ip_address=self.client_ip()
        )
        return self._item(draft, status.HTTP_201_CREATED)

    @extend_schema(
        request=DraftSaveSerializer,
        responses={200: DraftSerializer, 201: DraftSerializer},
        description="Create a draft, or update the one named by `id` (only the fields given change).",
    )
    @action(detail=False, methods=["post"], url_path="draft", url_name="draft")
    def save_draft(self, request, **kwargs):
        updating = isinstance(request.data, dict) and "id" in request.data
        data = self._valid(DraftSaveSerializer, request.data, partial=updating)
        if "id" not in data:
            return self.create(request, **kwargs)
        draft = self._draft(lock=True, pk=data.pop("id"))
        services.draft_update(draft=draft, user=self.user, data=data, ip_address=self.client_ip())
        return self._item(draft)

    def retrieve(self, request, **kwargs):
        return self._item(self._draft())

    @extend_schema(request=DraftInputSerializer, responses=DraftSerializer)
    def partial_update(self, request, **kwargs):
        draft = self._draft(lock=True)
        data = self._valid(DraftInputSerializer, request.data, partial=True)
        services.draft_update(draft=draft, user=self.user, data=data, ip_address=self.client_ip())
        return self._item(draft)

    @extend_schema(responses={204: None})
    def destroy(self, request, **kwargs):
        """Delete a draft (or a failed, uncertain or cancelled item); it goes
        from the server's Drafts folder too."""
        services.draft_delete(draft=self._draft(lock=True), actor=self.user, ip_address=self.client_ip())
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- attachments --------------------------------------------------------------

    @extend_schema(
        request={"multipart/form-data": AttachmentUploadSerializer},
        responses={
            201: DraftAttachmentSerializer,
            413: OpenApiResponse(description="The message would be over COMPOSE_MAX_MESSAGE_BYTES."),
        },
    )
    @action(detail=True, methods=["post"], url_path="attachments", parser_classes=[MultiPartParser])
    def attachments(self, request, **kwargs):
        """Upload a file (multipart, field `file`) to the draft."""
        draft = self._draft(lock=True)  # before the body is parsed: another's draft is a 404
        bound = BoundedUploadHandler(request._request, limit=selectors.draft_upload_room(draft=draft))
        request._request.upload_handlers = [bound, *request._request.upload_handlers]
        data = request.data
        if bound.exceeded:
            raise services.upload_too_large()
        upload = AttachmentUploadSerializer(data=data)
        upload.is_valid(raise_exception=True)
        file = upload.validated_data["file"]
        attachment = services.draft_attachment_add(
            draft=draft,
            filename=upload.validated_data.get("filename") or file.name or "",
            content_type=file.content_type or "",
            file=file,
            size=file.size,
            ip_address=self.client_ip(),
        )
        return Response(DraftAttachmentSerializer(attachment).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[ATTACHMENT_ID], responses={204: None})
    @action(
        detail=True,
        methods=["delete"],
        url_path=f"attachments/(?P<attachment_id>{UUID_PATTERN})",
        url_name="attachment",
    )
    def attachment_remove(self, request, attachment_id: str, **kwargs):
        draft = self._draft(lock=True)
        attachment = selectors.access_draft_attachment(draft=draft, id=uuid.UUID(attachment_id))
        services.draft_attachment_remove(draft=draft, attachment=attachment)
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- sending ------------------------------------------------------------------

    @extend_schema(request=None, parameters=[IDEMPOTENCY_HEADER], responses=SEND_RESPONSES)
    @action(detail=True, methods=["post"])
    def send(self, request, **kwargs):
        """Queue the draft (or send a failed or uncertain item again, with its
        Message-ID): 202 with the item, `queued` or `scheduled`."""
        pk = uuid.UUID(str(self.kwargs["pk"]))

        def perform() -> tuple[Draft, bool]:
            draft = self._draft(lock=True, pk=pk)
            resend = bool(draft.message_id)
            return services.draft_send(draft=draft, actor=self.user, ip_address=self.client_ip()), resend

        return self._idempotent(f"send:{pk}", perform)

    @extend_schema(request=DraftInputSerializer, parameters=[IDEMPOTENCY_HEADER], responses=SEND_RESPONSES)
    @action(detail=False, methods=["post"], url_path="send")
    def send_new(self, request, **kwargs):
        """Create a draft from the body and queue it, in one call."""

        def perform() -> tuple[Draft, bool]:
            data = self._valid(DraftInputSerializer, request.data)
            draft = services.draft_create_and_send(
                tenant=self.tenant, user=self.user, data=data, ip_address=self.client_ip()
            )
            return draft, False

        return self._idempotent("send", perform)

    @extend_schema(
        request=None, responses={200: DraftSerializer, 409: OpenApiResponse(description="Too late.")}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, **kwargs):
        """Cancel a scheduled or queued send that has not started."""
        draft = services.draft_cancel(
            draft=self._draft(lock=True), actor=self.user, ip_address=self.client_ip()
        )
        return self._item(draft)
