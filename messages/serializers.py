import base64
import datetime
import uuid
from typing import Any, Protocol, cast

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from accounts.models import Protocol as AccountProtocol
from accounts.models import server_sync
from accounts.serializers import ServerSyncSerializer
from emailclient.core.pagination import KeysetPagination

from .models import Attachment, Folder, Message
from .parsing import message_id
from .sanitize import SanitizedHtml
from .search import MAX_QUERY_LENGTH, SearchQueryError, parse_search_query
from .selectors import LIST_FIELDS


class AddressSerializer(serializers.Serializer):
    name = serializers.CharField(allow_blank=True)
    address = serializers.CharField(allow_blank=True)


@extend_schema_field(AddressSerializer)
class SenderField(serializers.Field):
    """`from_name` and `from_address` as one address object."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, message: Message) -> dict:
        return {"name": message.from_name, "address": message.from_address}


class MessageListSerializer(serializers.ModelSerializer):
    """A list item: headers, state and a short preview; no bodies."""

    sender = SenderField()
    to = AddressSerializer(many=True, read_only=True)
    cc = AddressSerializer(many=True, read_only=True)
    preview = serializers.CharField(source="snippet", read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "account",
            "folder",
            "thread_id",
            "message_id",
            "message_id_synthetic",
            "subject",
            "sender",
            "to",
            "cc",
            "preview",
            "is_read",
            "is_flagged",
            "is_answered",
            "is_draft",
            "has_attachments",
            "received_at",
            "sent_at",
            "size_bytes",
        ]
        read_only_fields = fields

    def to_representation(self, message: Message | dict) -> dict:
        """The fields above, built directly: DRF's generic loop over declared
        fields (and building them) took a third of a 50-message page's
        time. Takes a message or a list row (`selectors.list_rows`, a dict
        of LIST_FIELDS). A test holds both equal to the generic form."""
        m = message if isinstance(message, dict) else {name: getattr(message, name) for name in LIST_FIELDS}
        return {
            "id": str(m["id"]),
            "account": str(m["account_id"]),
            "folder": str(m["folder_id"]),
            "thread_id": None if m["thread_id"] is None else str(m["thread_id"]),
            "message_id": m["message_id"],
            "message_id_synthetic": m["message_id_synthetic"],
            "subject": m["subject"],
            "sender": {"name": m["from_name"], "address": m["from_address"]},
            "to": _addresses(m["to"]),
            "cc": _addresses(m["cc"]),
            "preview": m["snippet"],
            "is_read": m["is_read"],
            "is_flagged": m["is_flagged"],
            "is_answered": m["is_answered"],
            "is_draft": m["is_draft"],
            "has_attachments": m["has_attachments"],
            "received_at": _utc_iso(m["received_at"]),
            "sent_at": _utc_iso(m["sent_at"]),
            "size_bytes": m["size_bytes"],
        }


def _utc_iso(value: datetime.datetime | None) -> str | None:
    """DRF's ISO 8601 form of an aware datetime in UTC (TIME_ZONE): ...Z."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _addresses(entries: list[dict]) -> list[dict]:
    return [{"name": str(a["name"]), "address": str(a["address"])} for a in entries]


class AttachmentSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Attachment
        fields = ["id", "filename", "mime_type", "size_bytes", "content_id", "is_inline", "download_url"]
        read_only_fields = fields

    def get_download_url(self, attachment: Attachment) -> str:
        return self.context["download_urls"][attachment.id]


class _DetailSource(Protocol):
    """A stored message as the detail view hands it over: with its HTML
    sanitised and its attachments fetched."""

    id: uuid.UUID
    folder: Folder
    bcc: list[Any]
    reply_to: list[Any]
    in_reply_to: str
    references: list[str]
    flags: list[str]
    text_body: str
    deleted_at: datetime.datetime | None
    sanitized: SanitizedHtml
    html_truncated: bool
    attachment_list: list[Attachment]


class MessageDetailSerializer(MessageListSerializer):
    """The whole message. `html` is the sanitised HTML body; `remote_images_blocked`
    says how many remote images it referenced that were left out (ask again
    with `?remote_images=1` to keep them); `html_truncated` that the body
    was longer than MAIL_HTML_MAX_CHARS and only its beginning is in `html`,
    followed by a notice (the whole message is at `raw_url`)."""

    bcc = AddressSerializer(many=True, read_only=True)
    reply_to = AddressSerializer(many=True, read_only=True)
    folder_name = serializers.CharField(source="folder.name", read_only=True)
    folder_type = serializers.CharField(source="folder.type", read_only=True)
    html = serializers.CharField(source="sanitized.html", read_only=True)
    remote_images_blocked = serializers.IntegerField(source="sanitized.remote_images_blocked", read_only=True)
    html_truncated = serializers.BooleanField(read_only=True)
    attachments = AttachmentSerializer(source="attachment_list", many=True, read_only=True)
    raw_url = serializers.SerializerMethodField()
    server_sync = serializers.SerializerMethodField(
        help_text='Where this message\'s flags and folder moves live: {"flags": "server", "moves": "server"} '
        'for an IMAP account\'s message (written back), {"flags": "local", "moves": "local"} for a POP3 '
        "one's (the protocol has neither: changes stay in this service)."
    )

    class Meta(MessageListSerializer.Meta):
        fields = [
            *MessageListSerializer.Meta.fields,
            "folder_name",
            "folder_type",
            "bcc",
            "reply_to",
            "in_reply_to",
            "references",
            "flags",
            "text_body",
            "html",
            "remote_images_blocked",
            "html_truncated",
            "attachments",
            "raw_url",
            "deleted_at",
            "server_sync",
        ]
        read_only_fields = fields

    def to_representation(self, message: Message | dict[str, Any]) -> dict[str, Any]:
        """The list item and the rest, built directly too: DRF's generic form
        built the 31 fields anew for every message (about 1 ms of a
        detail). A test holds it equal to the generic form. The view gives
        the message its sanitised HTML and its attachments (`_DetailSource`)."""
        data = super().to_representation(message)
        detail = cast(_DetailSource, message)
        data.update(
            folder_name=detail.folder.name,
            folder_type=detail.folder.type,
            bcc=_addresses(detail.bcc),
            reply_to=_addresses(detail.reply_to),
            in_reply_to=detail.in_reply_to,
            references=[str(reference) for reference in detail.references],
            flags=[str(flag) for flag in detail.flags],
            text_body=detail.text_body,
            html=detail.sanitized.html,
            remote_images_blocked=detail.sanitized.remote_images_blocked,
            html_truncated=detail.html_truncated,
            attachments=AttachmentSerializer(detail.attachment_list, many=True, context=self.context).data,
            raw_url=self.get_raw_url(detail),
            deleted_at=_utc_iso(detail.deleted_at),
            server_sync=self.get_server_sync(detail),
        )
        return data

    @extend_schema_field(ServerSyncSerializer)
    def get_server_sync(self, message: Message | _DetailSource) -> dict[str, str]:
        # The account's protocol (`access_message` annotates it; a message's
        # `pop3_uidl` says where it came from, not what its account is now).
        protocol = getattr(message, "account_protocol", None)
        if protocol is None:
            protocol = cast(Message, message).account.protocol
        return server_sync(AccountProtocol(protocol))

    def get_raw_url(self, message: Message | _DetailSource) -> str:
        return self.context["request"].build_absolute_uri(reverse("message-source", args=[message.id]))


class SearchQueryField(serializers.CharField):
    """A search query, validated as text (length, not blank) and returned
    parsed (`search.SearchQuery`); a query that does not parse is a
    validation error saying why. The one validation of a search query, for
    the message list's `q` and the search endpoint's `query`."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", MAX_QUERY_LENGTH)
        super().__init__(**kwargs)

    def run_validation(self, data=serializers.empty):
        text = super().run_validation(data)
        try:
            return parse_search_query(text)
        except SearchQueryError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class MessageFilterSerializer(serializers.Serializer):
    """Query parameters of the message list."""

    account = serializers.UUIDField(required=False)
    folder = serializers.UUIDField(required=False)
    thread = serializers.UUIDField(required=False)
    is_read = serializers.BooleanField(required=False, allow_null=True, default=None)
    is_flagged = serializers.BooleanField(required=False, allow_null=True, default=None)
    has_attachments = serializers.BooleanField(required=False, allow_null=True, default=None)
    received_after = serializers.DateTimeField(required=False, help_text="Inclusive.")
    received_before = serializers.DateTimeField(required=False, help_text="Exclusive.")
    sender = serializers.CharField(
        required=False, max_length=200, help_text="Part of the sender's address or name."
    )
    message_id = serializers.CharField(
        required=False,
        max_length=2000,
        help_text="A Message-ID, with or without angle brackets, read as the parser reads the header.",
    )
    q = SearchQueryField(required=False, help_text="A search query (see the search endpoint).")
    order = serializers.ChoiceField(
        choices=["newest", "relevance"], default="newest", help_text="`relevance` needs `q`."
    )

    def validate_message_id(self, value: str) -> str:
        normalised = message_id(value)
        if not normalised:
            raise serializers.ValidationError("Not a Message-ID.")
        return normalised

    def validate(self, attrs):
        after, before = attrs.get("received_after"), attrs.get("received_before")
        if after and before and after >= before:
            raise serializers.ValidationError({"received_before": "Must be later than received_after."})
        if attrs["order"] == "relevance" and not attrs.get("q"):
            raise serializers.ValidationError({"order": "Ordering by relevance needs a search query (q)."})
        return attrs


class SearchParamsSerializer(serializers.Serializer):
    query = SearchQueryField()
    account = serializers.UUIDField(required=False)
    order = serializers.ChoiceField(choices=["newest", "relevance"], default="newest")


class MessageUpdateSerializer(serializers.Serializer):
    is_read = serializers.BooleanField(required=False)
    is_flagged = serializers.BooleanField(required=False)

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": ["Give is_read and/or is_flagged."]})
        return attrs


class MessageMoveSerializer(serializers.Serializer):
    folder = serializers.UUIDField(help_text="The destination folder, of the same account.")


class MessageIdsSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.UUIDField(), min_length=1, max_length=500)


class BulkUpdateSerializer(MessageIdsSerializer, MessageUpdateSerializer):
    pass


class BulkMoveSerializer(MessageIdsSerializer, MessageMoveSerializer):
    pass


class BulkDeleteSerializer(MessageIdsSerializer):
    permanent = serializers.BooleanField(default=False)


class ThreadSerializer(serializers.Serializer):
    thread_id = serializers.UUIDField()
    latest_at = serializers.DateTimeField()
    message_count = serializers.IntegerField()
    unread_count = serializers.IntegerField()
    participants = serializers.ListField(child=serializers.CharField())
    latest_message = MessageListSerializer(allow_null=True)


class ThreadPageSerializer(serializers.Serializer):
    """A page of threads; `previous` is always null (pages go forward)."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ThreadSerializer(many=True)


class ThreadFilterSerializer(serializers.Serializer):
    """Query parameters of the thread list."""

    account = serializers.UUIDField()
    cursor = serializers.CharField(
        required=False, max_length=200, help_text="From the previous page's `next`."
    )
    page_size = serializers.IntegerField(
        required=False,
        default=api_settings.PAGE_SIZE,
        min_value=1,
        max_value=KeysetPagination.max_page_size,
    )

    def validate_cursor(self, value: str):
        """The position a `next` link carries (`thread_cursor`)."""
        try:
            received_at, message_id = base64.urlsafe_b64decode(value.encode("ascii")).decode().split("|")
            position = (datetime.datetime.fromisoformat(received_at), uuid.UUID(message_id))
        except (ValueError, UnicodeError):  # binascii.Error is a ValueError
            raise serializers.ValidationError("Invalid cursor.") from None
        if position[0].utcoffset() != datetime.timedelta(0):  # what thread_cursor() writes: UTC
            raise serializers.ValidationError("Invalid cursor.")
        return position


def thread_cursor(position: tuple[datetime.datetime, uuid.UUID]) -> str:
    received_at, message_id = position
    stamp = received_at.astimezone(datetime.UTC).isoformat()
    return base64.urlsafe_b64encode(f"{stamp}|{message_id}".encode()).decode("ascii")


class ThreadMessagesFilterSerializer(serializers.Serializer):
    """A thread's page of messages (for the schema; the pagination reads them)."""

    cursor = serializers.CharField(required=False, help_text="From the `next` or `previous` link.")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)


class ThreadDetailSerializer(serializers.Serializer):
    """A thread: its subject and counts (all its messages), and one page of
    its messages, oldest first, with the links to the pages around it."""

    thread_id = serializers.UUIDField()
    subject = serializers.CharField()
    message_count = serializers.IntegerField()
    unread_count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    messages = MessageListSerializer(many=True)


class FolderSerializer(serializers.ModelSerializer):
    display_name = serializers.SerializerMethodField(help_text="The last part of the hierarchical name.")

    class Meta:
        model = Folder
        fields = [
            "id",
            "account",
            "name",
            "display_name",
            "delimiter",
            "parent",
            "type",
            "attributes",
            "is_selectable",
            "unread_count",
            "total_count",
            "last_synced_at",
        ]
        read_only_fields = fields

    def get_display_name(self, folder: Folder) -> str:
        if folder.delimiter and folder.delimiter in folder.name:
            return folder.name.rsplit(folder.delimiter, 1)[1]
        return folder.name


class FolderFilterSerializer(serializers.Serializer):
    account = serializers.UUIDField(required=False)
