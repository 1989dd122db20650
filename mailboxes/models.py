from django.conf import settings
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


class MessageChange(TenantModel):
    """A change made through the API to a message, waiting to be written to
    the mail server (or written, or given up on and undone).

    The database changes at once; `mailboxes.writeback` replays the account's
    pending changes on the server, oldest first. While one is pending, the
    sync leaves the message's state alone, so it cannot undo the change;
    once written, the server agrees with the database."""

    class Kind(models.TextChoices):
        FLAGS = "flags", "Flags"
        MOVE = "move", "Move"
        EXPUNGE = "expunge", "Expunge"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Written to the server"
        FAILED = "failed", "Failed and undone"

    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    message = models.ForeignKey(
        "mail.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="changes"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # Where the message was on the server when the change was made.
    # For flags, where it is when the change is written instead.
    folder_name = models.TextField(blank=True)
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    imap_uid = models.BigIntegerField(null=True, blank=True)
    target_folder = models.ForeignKey(
        Folder, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    flags = models.JSONField(default=dict, blank=True, help_text='e.g. {"\\\\Seen": true}')
    previous = models.JSONField(
        default=dict, blank=True, help_text="The database state to restore on failure."
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "email_message_changes"
        ordering = ["created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=["flags", "move", "expunge"]), name="message_change_kind_valid"
            ),
        ]
        indexes = [
            models.Index(
                fields=["account", "created_at"],
                condition=models.Q(state="pending"),
                name="idx_changes_pending",
            ),
            models.Index(
                fields=["message"], condition=models.Q(state="pending"), name="idx_changes_pending_message"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} uid {self.imap_uid} of {self.folder_name} ({self.state})"
