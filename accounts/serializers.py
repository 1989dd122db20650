from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from emailclient.core.validators import validate_hostname

from .models import EmailAccount, Encryption, Protocol
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


class AccountOutputSerializer(serializers.ModelSerializer):
    has_smtp_password = serializers.SerializerMethodField()

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
