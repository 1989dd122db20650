"""Input and output shapes of the compose API.

Input serializers parse and type-check (addresses strictly, header values
without CR, LF or NUL); what depends on the database (the account, the
message replied to, the size and recipient limits of the whole draft) is the
services' to check.
"""

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .addresses import AddressError, header_text_check, mailbox_parse
from .models import Draft, DraftAttachment, SendQueueItem, Status

# Entries of one recipient list the parser looks at, at most; the limit on
# recipients of a message (COMPOSE_MAX_RECIPIENTS) is checked on the whole draft.
MAX_LIST_ENTRIES = 1000
MAX_SUBJECT = 998  # RFC 5322's line length: a longer subject is folded anyway


def _no_surrogates(entry: Any) -> None:
    """Lone surrogates (JSON's `"\\ud800"`), which no UTF-8 column takes;
    `mailbox_parse` checks the rest (control characters, the syntax)."""
    values = entry.values() if isinstance(entry, dict) else [entry]
    for value in values:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise AddressError("Not valid Unicode.") from None


MAILBOX_SCHEMA = {
    "oneOf": [
        {"type": "string", "example": '"Doe, Jane" <jane@example.com>'},
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "address": {"type": "string"}},
            "required": ["address"],
        },
    ]
}


@extend_schema_field({"type": "array", "items": MAILBOX_SCHEMA})
class MailboxListField(serializers.Field):
    """A list of `"Name <addr>"` strings or `{"name", "address"}` objects,
    parsed with `compose.addresses.mailbox_list_parse`: `[{"name", "address"}]`,
    the domain in IDNA. Errors name the entry: `{"to": {"1": ["..."]}}`."""

    default_error_messages = {
        "not_a_list": "Expected a list of addresses.",
        "too_many": f"At most {MAX_LIST_ENTRIES} entries.",
    }

    def to_internal_value(self, data: Any) -> list[dict[str, str]]:
        if not isinstance(data, list):
            self.fail("not_a_list")
        if len(data) > MAX_LIST_ENTRIES:
            self.fail("too_many")
        parsed: list[dict[str, str]] = []
        errors: dict[int, list[str]] = {}
        for index, entry in enumerate(data):
            try:
                _no_surrogates(entry)
                parsed.append(mailbox_parse(entry))
            except AddressError as exc:
                errors[index] = [exc.message]
        if errors:
            raise serializers.ValidationError({str(index): messages for index, messages in errors.items()})
        return parsed

    def to_representation(self, value: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{"name": str(m.get("name", "")), "address": str(m["address"])} for m in value]


class HeaderTextField(serializers.CharField):
    """Text that goes into a header: no CR, LF or NUL (no header injection)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            return header_text_check(value)
        except AddressError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class DraftInputSerializer(serializers.Serializer):
    """A draft's content. On create `account` is required; on update (PATCH,
    or `POST /compose/draft` with `id`) only the fields given change.
    `attachments` is the list of the draft's uploads to keep (the others are
    removed); absent, they all stay. `in_reply_to` and `forward_of` are set
    when the draft is created and cannot change."""

    account = serializers.UUIDField(help_text="The sending account: one of the user's own.")
    to = MailboxListField(required=False)
    cc = MailboxListField(required=False)
    bcc = MailboxListField(required=False)
    reply_to = MailboxListField(required=False)
    subject = HeaderTextField(required=False, allow_blank=True, max_length=MAX_SUBJECT)
    text_body = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    html_body = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="Sanitised on the way in (remote images kept: the user wrote them).",
    )
    in_reply_to = serializers.UUIDField(
        required=False, allow_null=True, help_text="A stored message (of the user's accounts) to reply to."
    )
    reply_all = serializers.BooleanField(required=False)
    forward_of = serializers.UUIDField(
        required=False, allow_null=True, help_text="A stored message (of the user's accounts) to forward."
    )
    send_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Send later (in the future); null: at once."
    )
    attachments = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        max_length=MAX_LIST_ENTRIES,
        help_text="Ids of the draft's uploads to keep.",
    )

    def validate_send_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("in_reply_to") and attrs.get("forward_of"):
            raise serializers.ValidationError({"forward_of": ["Give in_reply_to or forward_of, not both."]})
        return attrs


class DraftSaveSerializer(DraftInputSerializer):
    """`POST /compose/draft`: with `id`, an update of that draft; without, a new one."""

    id = serializers.UUIDField(required=False, help_text="The draft to update; absent: create one.")


class AttachmentUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True, use_url=False)
    filename = HeaderTextField(
        required=False, max_length=255, help_text="The attachment's name, if not the uploaded file's."
    )


class DraftAttachmentSerializer(serializers.ModelSerializer):
    size = serializers.IntegerField(source="size_bytes", read_only=True)

    class Meta:
        model = DraftAttachment
        fields = ["id", "filename", "content_type", "size"]
        read_only_fields = fields


class MailboxSerializer(serializers.Serializer):
    name = serializers.CharField()
    address = serializers.CharField()


class SmtpReplySerializer(serializers.Serializer):
    code = serializers.IntegerField(allow_null=True)
    text = serializers.CharField()


class RecipientResultSerializer(serializers.Serializer):
    address = serializers.CharField()
    status = serializers.ChoiceField(choices=["accepted", "refused"])
    code = serializers.IntegerField(allow_null=True)
    text = serializers.CharField()


class OutboxSerializer(serializers.ModelSerializer):
    """The delivery record of a queued item."""

    last_reply = serializers.SerializerMethodField()
    recipients = serializers.SerializerMethodField()

    class Meta:
        model = SendQueueItem
        fields = [
            "attempts",
            "next_attempt_at",
            "last_attempt_at",
            "phase",
            "last_reply",
            "recipients",
            "sent_at",
            "sent_copy",
            "error",
        ]
        read_only_fields = fields

    @extend_schema_field(SmtpReplySerializer(allow_null=True))
    def get_last_reply(self, item: SendQueueItem) -> dict[str, Any] | None:
        if item.last_reply_code is None and not item.last_reply:
            return None
        return {"code": item.last_reply_code, "text": item.last_reply}

    @extend_schema_field(RecipientResultSerializer(many=True))
    def get_recipients(self, item: SendQueueItem) -> list[dict[str, Any]]:
        """Every envelope recipient in order, with its result once there is one."""
        results = item.recipient_results or {}
        out = []
        for address in [*item.recipients, *(a for a in results if a not in item.recipients)]:
            result = results.get(address)
            if result is None:
                continue
            out.append(
                {
                    "address": address,
                    "status": result.get("status", ""),
                    "code": result.get("code"),
                    "text": result.get("reply", ""),
                }
            )
        return out


class ServerCopySerializer(serializers.Serializer):
    """The draft's copy in the account's Drafts folder."""

    saved = serializers.BooleanField(help_text="The server holds the current version.")
    version = serializers.IntegerField()
    server_version = serializers.IntegerField()
    error = serializers.CharField(help_text="Why the last save failed, or empty.")


class DraftSerializer(serializers.ModelSerializer):
    """An item: a draft, or a message on its way out (`outbox`), or sent.
    `sent_message` is the stored message in the account's Sent folder once a
    sync has brought it in (the view gives the map, `context["sent_messages"]`)."""

    to = MailboxListField(read_only=True)
    cc = MailboxListField(read_only=True)
    bcc = MailboxListField(read_only=True)
    reply_to = MailboxListField(read_only=True)
    attachments = DraftAttachmentSerializer(many=True, read_only=True)
    outbox = serializers.SerializerMethodField()
    sent_message = serializers.SerializerMethodField()
    server_copy = serializers.SerializerMethodField()

    class Meta:
        model = Draft
        fields = [
            "id",
            "account",
            "status",
            "to",
            "cc",
            "bcc",
            "reply_to",
            "subject",
            "text_body",
            "html_body",
            "in_reply_to",
            "reply_all",
            "forward_of",
            "in_reply_to_header",
            "references_header",
            "send_at",
            "attachments",
            "message_id",
            "version",
            "outbox",
            "sent_message",
            "server_copy",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(OutboxSerializer(allow_null=True))
    def get_outbox(self, draft: Draft) -> dict[str, Any] | None:
        try:
            item = draft.outbox
        except ObjectDoesNotExist:
            return None
        return dict(OutboxSerializer(item).data)

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_sent_message(self, draft: Draft) -> str | None:
        found = self.context.get("sent_messages", {}).get(draft.id)
        return None if found is None else str(found)

    @extend_schema_field(ServerCopySerializer)
    def get_server_copy(self, draft: Draft) -> dict[str, Any]:
        return {
            "saved": draft.status == Status.DRAFT and draft.server_version == draft.version,
            "version": draft.version,
            "server_version": draft.server_version,
            "error": draft.server_error,
        }


class DraftFilterSerializer(serializers.Serializer):
    """Query parameters of the list."""

    status = serializers.ChoiceField(choices=Status.choices, required=False)
    account = serializers.UUIDField(required=False)
