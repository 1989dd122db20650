from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from emailclient.core.api import HasTenant, TenantAPIMixin
from emailclient.core.exceptions import NotFound
from emailclient.core.models import Tenant
from emailclient.core.pagination import KeysetPagination
from emailclient.core.planner import planner_settings
from emailclient.core.schema import TENANT_HEADER
from emailclient.core.throttling import tenant_user_throttle_check

from . import selectors, services
from .blobs import default_store
from .downloads import (
    attachment_by_token,
    attachment_token,
    attachment_token_read,
    blob_open,
    blob_response,
    safe_filename,
)
from .models import Attachment, Folder, Message
from .sanitize import sanitize_html_for_reading
from .search import (
    SearchOrder,
    SearchQuery,
    apply_search,
    positive_conditions,
    search_time_limit,
    with_sender,
)
from .selectors import access_folder, folder_list
from .serializers import (
    BulkDeleteSerializer,
    BulkMoveSerializer,
    BulkUpdateSerializer,
    FolderFilterSerializer,
    FolderSerializer,
    MessageDetailSerializer,
    MessageFilterSerializer,
    MessageListSerializer,
    MessageMoveSerializer,
    MessageUpdateSerializer,
    SearchParamsSerializer,
    ThreadDetailSerializer,
    ThreadFilterSerializer,
    ThreadMessagesFilterSerializer,
    ThreadPageSerializer,
    ThreadSerializer,
    thread_cursor,
)

REMOTE_IMAGES = OpenApiParameter(
    "remote_images", OpenApiTypes.BOOL, description="Keep remote images in the HTML (blocked by default)."
)


class FolderPagination(KeysetPagination):
    ordering = ("name", "id")


class MessagePagination(KeysetPagination):
    ordering = ("-received_at", "-id")


class IdsPagination(MessagePagination):
    """Pages a search already narrowed to its candidates' ids
    (`selectors.narrow_to_candidate_ids`): by primary key. Left to itself the planner
    intersected the ids with another condition's index (185,000 unread
    messages for 1,108 candidates: 42 ms, not 2)."""

    def paginate_queryset(self, queryset, request, view=None):
        with planner_settings(enable_bitmapscan=False):
            return super().paginate_queryset(queryset, request, view)


class ThreadMessagesPagination(KeysetPagination):
    """A thread's messages, oldest first, like the folder list a page at a time."""

    ordering = ("received_at", "id")


class RelevancePagination(KeysetPagination):
    ordering = ("-rank", "-received_at", "-id")


def _flag(request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in {"1", "true", "yes"}


def paginated_messages(view, messages, pagination_class):
    """A page of list items (`selectors.list_rows`) and its cursors."""
    paginator = pagination_class()
    page = paginator.paginate_queryset(selectors.list_rows(messages), view.request, view=view)
    return paginator.get_paginated_response(MessageListSerializer(page, many=True).data)


def search_queryset_and_paginator(
    queryset: QuerySet[Message], query: SearchQuery, order: SearchOrder, *, tenant: Tenant
) -> tuple[QuerySet[Message], type[KeysetPagination]]:
    """The queryset narrowed by a parsed search query, and the pagination
    class that pages it (by relevance, by the candidates' ids, or newest
    first)."""
    matching = apply_search(queryset, query, order=order)
    if "rank" in matching.query.annotations:  # relevance needs words to rank by (and sorts every match)
        return matching, RelevancePagination
    narrowed, by_ids = selectors.narrow_to_candidate_ids(
        matching,
        scope=queryset,
        candidates=positive_conditions(query),
        whole_tenant=selectors.all_tenant_messages(tenant=tenant),
    )
    return narrowed, (IdsPagination if by_ids else MessagePagination)


@extend_schema(parameters=[TENANT_HEADER])
class MessageViewSet(TenantAPIMixin, viewsets.GenericViewSet):
    """Messages of the accounts the user sees, newest first.

    Changes (read/flagged, move, delete) apply to the database at once and are
    written back to the mail server by a background task; when the server
    refuses them for good they are undone and the undo is audited."""

    serializer_class = MessageListSerializer
    # A list with `q` or `sender` (a substring) is a search.
    throttle_scope, throttle_scope_param = "search", ("q", "sender")

    def get_queryset(self):
        return Message.objects.none()  # every action builds its own, from the selectors

    def _message(self, *, lock: bool = False) -> Message:
        return selectors.access_message(
            tenant=self.tenant, membership=self.membership, id=self.kwargs["pk"], lock=lock
        )

    def _messages(self, ids) -> list[Message]:
        return selectors.access_messages(tenant=self.tenant, membership=self.membership, ids=ids)

    @extend_schema(parameters=[MessageFilterSerializer])
    def list(self, request, **kwargs):
        params = MessageFilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        filters = selectors.MessageFilters(
            **{k: v for k, v in data.items() if k in selectors.MessageFilters.__dataclass_fields__}
        )
        messages = selectors.message_list(tenant=self.tenant, membership=self.membership, filters=filters)
        query = data.get("q")
        if data.get("sender"):  # a substring: searched as `from:` is, on its index
            query = with_sender(query, data["sender"])
        if query is None:
            return paginated_messages(self, messages, MessagePagination)
        with search_time_limit():
            messages, pagination = search_queryset_and_paginator(
                messages, query, data["order"], tenant=self.tenant
            )
            return paginated_messages(self, messages, pagination)

    @extend_schema(parameters=[REMOTE_IMAGES], responses=MessageDetailSerializer)
    def retrieve(self, request, **kwargs):
        message = self._message()
        attachments = selectors.message_attachments(message=message)
        urls = {a.id: self._download_url(a) for a in attachments}
        cid_urls = {a.content_id.strip("<>").lower(): urls[a.id] for a in attachments if a.content_id}
        remote = _flag(request, "remote_images")
        message.sanitized, message.html_truncated = sanitize_html_for_reading(
            message.html_body, message_id=message.id, cid_urls=cid_urls, allow_remote_images=remote
        )
        message.attachment_list = attachments
        context = {"request": request, "download_urls": urls}
        return Response(MessageDetailSerializer(message, context=context).data)

    def _download_url(self, attachment: Attachment) -> str:
        token = attachment_token(
            tenant_id=attachment.tenant_id, user=self.request.user, attachment_id=attachment.id
        )
        path = reverse("attachment-download", args=[attachment.id])
        return self.request.build_absolute_uri(f"{path}?token={token}")

    @extend_schema(responses={(200, "message/rfc822"): OpenApiTypes.BINARY})
    def raw(self, request, **kwargs):
        """The original RFC 822 source, as the server sent it."""
        message = self._message()
        blob = blob_open(
            default_store(),
            tenant_id=message.tenant_id,
            key=message.raw_blob_key,
            missing="The message's source is not stored.",
        )
        name = safe_filename(message.subject, default="message")
        return blob_response(blob, filename=f"{name}.eml", mime_type="message/rfc822")

    @extend_schema(request=MessageUpdateSerializer, responses=MessageListSerializer)
    def partial_update(self, request, **kwargs):
        serializer = MessageUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = self._message(lock=True)
        services.messages_flag(
            tenant=self.tenant,
            actor=request.user,
            messages=[message],
            ip_address=self.client_ip(),
            **serializer.validated_data,
        )
        return Response(MessageListSerializer(message).data)

    @extend_schema(request=MessageMoveSerializer, responses=MessageListSerializer)
    @action(detail=True, methods=["post"])
    def move(self, request, **kwargs):
        serializer = MessageMoveSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = self._message(lock=True)
        folder = self._folder(serializer.validated_data["folder"])
        services.messages_move(
            tenant=self.tenant,
            actor=request.user,
            messages=[message],
            folder=folder,
            ip_address=self.client_ip(),
        )
        return Response(MessageListSerializer(message).data)

    def _folder(self, folder_id):
        try:
            return access_folder(tenant=self.tenant, membership=self.membership, id=folder_id)
        except NotFound as exc:
            raise NotFound("Folder not found.", fields={"folder": ["Unknown folder."]}) from exc

    @extend_schema(
        parameters=[OpenApiParameter("permanent", OpenApiTypes.BOOL, description="Expunge without Trash.")],
        responses={204: None},
    )
    def destroy(self, request, **kwargs):
        """Move to Trash; a message already in Trash (or with `?permanent=1`)
        is deleted from the server for good."""
        permanent = _flag(request, "permanent")
        message = self._message(lock=True)
        services.messages_delete(
            tenant=self.tenant,
            actor=request.user,
            messages=[message],
            permanent=permanent,
            ip_address=self.client_ip(),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=BulkUpdateSerializer, responses=MessageListSerializer(many=True))
    @action(detail=False, methods=["post"], url_path="bulk/update")
    def bulk_update(self, request, **kwargs):
        serializer = BulkUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        messages = self._messages(data.pop("ids"))
        services.messages_flag(
            tenant=self.tenant, actor=request.user, messages=messages, ip_address=self.client_ip(), **data
        )
        return Response(MessageListSerializer(messages, many=True).data)

    @extend_schema(request=BulkMoveSerializer, responses=MessageListSerializer(many=True))
    @action(detail=False, methods=["post"], url_path="bulk/move")
    def bulk_move(self, request, **kwargs):
        serializer = BulkMoveSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        folder = self._folder(serializer.validated_data["folder"])
        messages = self._messages(serializer.validated_data["ids"])
        services.messages_move(
            tenant=self.tenant,
            actor=request.user,
            messages=messages,
            folder=folder,
            ip_address=self.client_ip(),
        )
        return Response(MessageListSerializer(messages, many=True).data)

    @extend_schema(request=BulkDeleteSerializer, responses={204: None})
    @action(detail=False, methods=["post"], url_path="bulk/delete")
    def bulk_delete(self, request, **kwargs):
        serializer = BulkDeleteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        messages = self._messages(serializer.validated_data["ids"])
        services.messages_delete(
            tenant=self.tenant,
            actor=request.user,
            messages=messages,
            permanent=serializer.validated_data["permanent"],
            ip_address=self.client_ip(),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class SearchView(TenantAPIMixin, APIView):
    """`GET /api/sync/search?query=...`: search across the user's
    accounts (or one, with `account`). Same results as `/api/messages/?q=`."""

    throttle_scope = "search"

    @extend_schema(
        parameters=[TENANT_HEADER, SearchParamsSerializer], responses=MessageListSerializer(many=True)
    )
    def get(self, request, **kwargs):
        params = SearchParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        filters = selectors.MessageFilters(account=params.validated_data.get("account"))
        messages = selectors.message_list(tenant=self.tenant, membership=self.membership, filters=filters)
        with search_time_limit():
            messages, pagination = search_queryset_and_paginator(
                messages, params.validated_data["query"], params.validated_data["order"], tenant=self.tenant
            )
            return paginated_messages(self, messages, pagination)


@extend_schema(parameters=[TENANT_HEADER])
class ThreadViewSet(TenantAPIMixin, viewsets.GenericViewSet):
    """Conversations of one account, the most recently active first."""

    serializer_class = ThreadSerializer

    def get_queryset(self):
        return Message.objects.none()

    @extend_schema(parameters=[ThreadFilterSerializer], responses=ThreadPageSerializer)
    def list(self, request, **kwargs):
        """Pages go forward only: follow `next` (`previous` is always null)."""
        params = ThreadFilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        account_id = data["account"]
        page, next_position = selectors.thread_page(
            tenant=self.tenant,
            membership=self.membership,
            account_id=account_id,
            size=data["page_size"],
            after=data.get("cursor"),
        )
        latest = selectors.thread_latest_messages(
            tenant=self.tenant, account_id=account_id, thread_ids=[row["thread_id"] for row in page]
        )
        for row in page:
            row["latest_message"] = latest.get(row["thread_id"])
        next_url = None
        if next_position is not None:
            next_url = replace_query_param(
                request.build_absolute_uri(), "cursor", thread_cursor(next_position)
            )
        results = ThreadSerializer(page, many=True).data
        return Response({"next": next_url, "previous": None, "results": results})

    @extend_schema(parameters=[ThreadMessagesFilterSerializer], responses=ThreadDetailSerializer)
    def retrieve(self, request, pk=None, **kwargs):
        """`messages` is one page, oldest first: follow `next` for the rest
        (`cursor` and `page_size` as in the message list); the subject and
        counts are the whole thread's."""
        first_page = not request.query_params.get(ThreadMessagesPagination.cursor_query_param)
        summary = selectors.thread_summary(
            tenant=self.tenant, membership=self.membership, thread_id=pk, subject=not first_page
        )
        paginator = ThreadMessagesPagination()
        page = paginator.paginate_queryset(
            selectors.thread_messages(tenant=self.tenant, membership=self.membership, thread_id=pk),
            request,
            view=self,
        )
        body = {
            "thread_id": pk,
            "subject": page[0]["subject"] if first_page and page else "",
            **summary,
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "messages": page,
        }
        return Response(ThreadDetailSerializer(body).data)


class AttachmentDownloadView(APIView):
    """An attachment's bytes. Either a member's bearer token and the tenant,
    or the signed `token` of the attachment's `download_url` (for `<img>`
    tags, which send no Authorization header)."""

    permission_classes = [permissions.AllowAny]  # checked below, one way or the other

    @extend_schema(
        parameters=[
            TENANT_HEADER,
            OpenApiParameter("token", OpenApiTypes.STR, description="The signed token of `download_url`."),
            OpenApiParameter("inline", OpenApiTypes.BOOL, description="Ask to show it (passive types only)."),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request, pk, **kwargs):
        attachment = self._attachment(request, pk)
        blob = blob_open(
            default_store(),
            tenant_id=attachment.tenant_id,
            key=attachment.content_hash,
            missing="The attachment's content is not stored.",
        )
        inline = attachment.is_inline or request.query_params.get("inline", "").lower() in {
            "1",
            "true",
            "yes",
        }
        return blob_response(
            blob,
            filename=safe_filename(attachment.filename, default="attachment"),
            mime_type=attachment.mime_type,
            inline=inline,
        )

    def _attachment(self, request, pk) -> Attachment:
        token = request.query_params.get("token")
        if token:
            attachment = attachment_by_token(token=token, id=pk)
            # No bearer token, so DRF's throttle counted nothing: the same
            # user and tenant limits, now that the token named them.
            ref = attachment_token_read(token)  # valid: attachment_by_token read it
            if ref is not None:
                tenant = Tenant.objects.get(id=ref.tenant_id)
                tenant_user_throttle_check(request=request, tenant=tenant, user_id=ref.user_id)
            return attachment
        for permission in (permissions.IsAuthenticated(), HasTenant()):
            if not permission.has_permission(request, self):
                self.permission_denied(request)
        tenant, membership = request._request.tenant, request._request.membership
        return selectors.access_attachment(tenant=tenant, membership=membership, id=pk)


@extend_schema(parameters=[TENANT_HEADER])
class FolderViewSet(TenantAPIMixin, viewsets.ReadOnlyModelViewSet):
    """Folders of the accounts the user sees, with their unread and total counts."""

    serializer_class = FolderSerializer
    pagination_class = FolderPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Folder.objects.none()
        filters = FolderFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return folder_list(
            tenant=self.tenant, membership=self.membership, account_id=filters.validated_data.get("account")
        )

    @extend_schema(parameters=[FolderFilterSerializer])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_object(self):
        return access_folder(tenant=self.tenant, membership=self.membership, id=self.kwargs["pk"])
