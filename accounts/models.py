from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

from emailclient.core.models import TenantModel


class Protocol(models.TextChoices):
    IMAP = "imap", "IMAP"
    POP3 = "pop3", "POP3"


def server_sync(protocol: str) -> dict[str, str]:
    """Where a message's flags (read, flagged...) and folder moves of an
    account of `protocol` live: "server", written back to the IMAP server, or
    "local", kept in this service only (POP3 has neither flags nor folders)."""
    where = "server" if protocol == Protocol.IMAP else "local"
    return {"flags": where, "moves": where}


class Encryption(models.TextChoices):
    NONE = "none", "None"
    TLS = "tls", "TLS"
    STARTTLS = "starttls", "STARTTLS"


class EmailAccount(TenantModel):
    """A mailbox a user connected: IMAP or POP3 for reading, SMTP for sending.

    Passwords are stored only as Fernet ciphertext (`emailclient.core.crypto`);
    read them with `accounts.services.account_credentials`.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="email_accounts"
    )
    account_name = models.CharField(max_length=255)
    email_address = models.EmailField(max_length=254)
    protocol = models.CharField(max_length=8, choices=Protocol.choices)
    hostname = models.CharField(max_length=253)
    port = models.PositiveIntegerField()
    encryption = models.CharField(max_length=16, choices=Encryption.choices)
    username = models.CharField(max_length=255)
    password_encrypted = models.TextField(editable=False)

    smtp_hostname = models.CharField(max_length=253, blank=True)
    smtp_port = models.PositiveIntegerField(null=True, blank=True)
    smtp_encryption = models.CharField(max_length=16, choices=Encryption.choices, blank=True)
    smtp_username = models.CharField(max_length=255, blank=True)
    smtp_password_encrypted = models.TextField(blank=True, editable=False)
    save_sent_copy = models.BooleanField(
        default=True,
        help_text="Append each sent message to the Sent folder. Off for servers that file it themselves.",
    )

    pop3_leave_on_server = models.BooleanField(
        default=True,
        help_text="POP3: leave mail on the server. Off: delete it there once it is stored here "
        "(committed, its blobs durable), after pop3_delete_after_days when set.",
    )
    pop3_delete_after_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="POP3 with pop3_leave_on_server off: delete on the server only this many days after "
        "the message was first downloaded; empty: as soon as it is stored.",
    )
    is_sync_enabled = models.BooleanField(default=True)
    sync_interval = models.PositiveIntegerField(default=300, help_text="Seconds between syncs.")
    last_sync_at = models.DateTimeField(null=True, blank=True)
    is_syncing = models.BooleanField(default=False)
    last_sync_error = models.TextField(blank=True)
    is_enabled = models.BooleanField(default=True)

    is_deleted = models.BooleanField(default=False)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "email_accounts"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                "tenant",
                "user",
                Lower("email_address"),
                condition=models.Q(is_deleted=False),
                name="uniq_account_tenant_user_email",
            ),
            models.CheckConstraint(
                condition=models.Q(port__gte=1, port__lte=65535), name="account_port_range"
            ),
            models.CheckConstraint(
                condition=models.Q(smtp_port__isnull=True) | models.Q(smtp_port__gte=1, smtp_port__lte=65535),
                name="account_smtp_port_range",
            ),
            models.CheckConstraint(
                condition=models.Q(protocol__in=Protocol.values), name="account_protocol_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(encryption__in=Encryption.values),
                name="account_encryption_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(smtp_encryption__in=[*Encryption.values, ""]),
                name="account_smtp_encryption_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(sync_interval__gte=60, sync_interval__lte=86400),
                name="account_sync_interval_range",
            ),
            models.CheckConstraint(
                condition=models.Q(pop3_delete_after_days__isnull=True)
                | models.Q(pop3_delete_after_days__lte=36500),
                name="account_pop3_delete_after_days_range",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "user"], name="idx_accounts_tenant_user"),
            models.Index(fields=["email_address"], name="idx_accounts_email_address"),
            models.Index(fields=["tenant", "is_sync_enabled", "last_sync_at"], name="idx_accounts_sync"),
            models.Index(
                fields=["tenant", "last_sync_at"],
                condition=models.Q(is_enabled=True, is_deleted=False),
                name="idx_accounts_active",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_name} <{self.email_address}>"
