from django.contrib.postgres.fields import ArrayField
from django.db import models

from emailclient.core.models import TenantModel


class FolderType(models.TextChoices):
    INBOX = "inbox", "Inbox"
    SENT = "sent", "Sent"
    DRAFTS = "drafts", "Drafts"
    TRASH = "trash", "Trash"
    SPAM = "spam", "Spam"
    ARCHIVE = "archive", "Archive"
    CUSTOM = "custom", "Custom"


class Folder(TenantModel):
    """A mailbox on the server (IMAP folder; POP3 has only the inbox) and its
    sync cursor: UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (RFC 3501, 7162)."""

    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="folders", db_index=False
    )
    name = models.TextField(help_text="Full server-side name, e.g. 'INBOX/Projects'.")
    delimiter = models.CharField(max_length=8, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    type = models.CharField(max_length=16, choices=FolderType.choices, default=FolderType.CUSTOM)
    attributes = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    is_selectable = models.BooleanField(default=True)
    unread_count = models.PositiveIntegerField(default=0)
    total_count = models.PositiveIntegerField(default=0)
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    uidnext = models.BigIntegerField(null=True, blank=True)
    highestmodseq = models.BigIntegerField(null=True, blank=True)
    sync_token = models.TextField(blank=True, help_text="Protocol-specific cursor (POP3).")
    last_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "email_folders"
        ordering = ["account_id", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "account", "name"], name="uniq_folder_tenant_account_name"
            ),
            models.CheckConstraint(condition=models.Q(type__in=FolderType.values), name="folder_type_valid"),
        ]
        indexes = [
            models.Index(fields=["account", "type"], name="idx_folders_account_type"),
            models.Index(fields=["tenant", "account"], name="idx_folders_tenant_account"),
            models.Index(
                fields=["type"],
                condition=models.Q(type__in=["inbox", "sent", "drafts", "trash", "spam", "archive"]),
                name="idx_folders_special_type",
            ),
        ]

    def __str__(self) -> str:
        return self.name
