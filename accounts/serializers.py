from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from emailclient.core.validators import validate_hostname

from .models import EmailAccount, Encryption, Protocol, server_sync
from .validators import validate_no_control_characters


class HostnameField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 253)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value == "":
            return value
        try:
            return validate_hostname(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc


class PasswordField(serializers.CharField):
    def __init__(self, **kwargs):
        super().__init__(
            write_only=True,
            trim_whitespace=False,
            max_length=1024,
            style={"input_type": "password"},
            **kwargs,
        )


def _no_control_characters(value: str) -> str:
    validate_no_control_characters(value)  # Django's ValidationError: DRF reports it on the field
    return value


def _encryption_allowed(value: str) -> str:
    if value == Encryption.NONE and not settings.MAIL_ALLOW_PLAINTEXT:
        raise serializers.ValidationError(
            "Unencrypted connections would send the password in clear text; use tls or starttls."
        )
    return value


class AccountInputSerializer(serializers.Serializer):
    """What a client may send. Tenant and owner come from the request, never
    from here; unknown fields are ignored."""

    account_name = serializers.CharField(max_length=255)
    email_address = serializers.EmailField(max_length=254)
    protocol = serializers.ChoiceField(choices=Protocol.choices)
    hostname = HostnameField()
    port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    encryption = serializers.ChoiceField(choices=Encryption.choices, default=Encryption.TLS)
    username = serializers.CharField(max_length=255, required=False, allow_blank=True)
    password = PasswordField(required=False)
    smtp_hostname = HostnameField(required=False, allow_blank=True)
    smtp_port = serializers.IntegerField(min_value=1, max_value=65535, required=False, allow_null=True)
    smtp_encryption = serializers.ChoiceField(choices=Encryption.choices, required=False, allow_blank=True)
    smtp_username = serializers.CharField(max_length=255, required=False, allow_blank=True)
    smtp_password = PasswordField(required=False, allow_blank=True)
    save_sent_copy = serializers.BooleanField(required=False)
    pop3_leave_on_server = serializers.BooleanField(
        required=False,
        help_text="POP3: leave mail on the server (default). Off: delete it there once stored.",
    )
    pop3_delete_after_days = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=36500,
        help_text="POP3 with pop3_leave_on_server off: delete on the server only this many days after the "
        "message was first downloaded; null: as soon as it is stored.",
    )
    is_sync_enabled = serializers.BooleanField(required=False)
    sync_interval = serializers.IntegerField(min_value=60, max_value=86400, required=False)
    is_enabled = serializers.BooleanField(required=False)

    def validate_encryption(self, value: str) -> str:
        return _encryption_allowed(value)

    def validate_smtp_encryption(self, value: str) -> str:
        return _encryption_allowed(value)

    def validate_password(self, value: str) -> str:
        if value == "":
            raise serializers.ValidationError("This field may not be blank.")
        return _no_control_characters(value)

    def validate_username(self, value: str) -> str:
        return _no_control_characters(value)

    def validate_smtp_username(self, value: str) -> str:
        return _no_control_characters(value)

    def validate_smtp_password(self, value: str) -> str:
        return _no_control_characters(value)


@extend_schema_field({"type": "string", "pattern": "^(server|local)$"})
class _SyncPlaceField(serializers.CharField):
    """The word "server" or "local" (output only). A pattern in the schema,
    not an enum: two fields of one choice set would make two enum components
    of different names."""


class ServerSyncSerializer(serializers.Serializer):
    """Where an account's (and each of its messages') state lives: "server"
    (IMAP: changes are written back to the mail server) or "local" (POP3: the
    protocol has no flags and no folders, so read/flagged state and moves
    between folders stay in this service and are never sent to the server)."""

    flags = _SyncPlaceField(help_text="Read, flagged, answered: written back or local only.")
    moves = _SyncPlaceField(help_text="Moves between folders: written back or local only.")


class AccountOutputSerializer(serializers.ModelSerializer):
    """An account. `server_sync` says where its messages' flags and folder
    moves live: {"flags": "server", "moves": "server"} for IMAP (written back
    to the server), {"flags": "local", "moves": "local"} for POP3 (kept here
    only: the protocol has neither). A POP3 account syncs its server's mailbox
    into INBOX and leaves mail on the server unless `pop3_leave_on_server` is
    off (then deletes it there once stored, `pop3_delete_after_days` after it
    was first downloaded when set); mail deleted on the server stays here."""

    has_smtp_password = serializers.SerializerMethodField()
    server_sync = serializers.SerializerMethodField()

    class Meta:
        model = EmailAccount
        fields = [
            "id",
            "account_name",
            "email_address",
            "protocol",
            "hostname",
            "port",
            "encryption",
            "username",
            "smtp_hostname",
            "smtp_port",
            "smtp_encryption",
            "smtp_username",
            "has_smtp_password",
            "save_sent_copy",
            "pop3_leave_on_server",
            "pop3_delete_after_days",
            "server_sync",
            "is_sync_enabled",
            "sync_interval",
            "last_sync_at",
            "is_syncing",
            "last_sync_error",
            "is_enabled",
            "user",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_has_smtp_password(self, account: EmailAccount) -> bool:
        return bool(account.smtp_password_encrypted)

    @extend_schema_field(ServerSyncSerializer)
    def get_server_sync(self, account: EmailAccount) -> dict[str, str]:
        return server_sync(account.protocol)
