"""Drafts, their uploads, the outbox and idempotency keys.

An item of the compose API is a `Draft` (`email_drafts`): what the user
writes, and its status from `draft` to `sent` (or `failed`, `uncertain`,
`cancelled`). Queuing it freezes the message: the MIME bytes with their
Message-ID and Date go to the blob store and a `SendQueueItem`
(`email_send_queue`) records the envelope and every delivery attempt. The
status lives on the draft alone; the send task moves it forward under the
draft's row lock (`compose.outbox`).
"""

from django.conf import settings
from django.db import models

from emailclient.core.models import TenantModel


class Status(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    UNCERTAIN = "uncertain", "Uncertain"
    CANCELLED = "cancelled", "Cancelled"


# A draft may be edited, deleted and sent only in these.
EDITABLE = (Status.DRAFT, Status.FAILED, Status.UNCERTAIN, Status.CANCELLED)
# A send may still be stopped in these.
CANCELLABLE = (Status.SCHEDULED, Status.QUEUED)


class Draft(TenantModel):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="drafts", db_index=False
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)

    # Recipients: lists of {"name": str, "address": str}, parsed and checked
    # (`compose.addresses`).
    to = models.JSONField(default=list, blank=True)
    cc = models.JSONField(default=list, blank=True)
    bcc = models.JSONField(default=list, blank=True)
    reply_to = models.JSONField(default=list, blank=True)
    subject = models.TextField(blank=True)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True, help_text="Sanitised on the way in.")

    # A reply or forward: the stored message it came from (gone if that is
    # deleted) and the threading headers taken from it when it was made.
    in_reply_to = models.ForeignKey(
        "mail.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    reply_all = models.BooleanField(default=False)
    forward_of = models.ForeignKey(
        "mail.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    in_reply_to_header = models.TextField(blank=True, help_text="Message-ID of the original, in <>.")
    references_header = models.TextField(blank=True)

    send_at = models.DateTimeField(null=True, blank=True)
    # Fixed when first queued (kept on an explicit resend of an `uncertain` item,
    # so a receiving server may recognise the duplicate).
    message_id = models.CharField(max_length=255, blank=True)

    # Edits bump `version`; the copy in the server's Drafts folder is of
    # `server_version` (`compose.drafts_folder`).
    version = models.PositiveIntegerField(default=1)
    server_version = models.PositiveIntegerField(default=0)
    server_folder = models.ForeignKey(
        "mail.Folder", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    server_uidvalidity = models.BigIntegerField(null=True, blank=True)
    server_uid = models.BigIntegerField(null=True, blank=True)
    server_error = models.TextField(blank=True)

    # DELETE hides the draft at once; the row goes when its server copy has.
    is_deleted = models.BooleanField(default=False)

    class Meta:
        db_table = "email_drafts"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=Status.values), name="draft_status_valid"),
        ]
        indexes = [
            # The list: a user's items, newest first, by status or not.
            models.Index(
                fields=["tenant", "user", "-created_at", "-id"],
                condition=models.Q(is_deleted=False),
                name="idx_drafts_user_list",
            ),
            # What the dispatcher looks for: scheduled sends now due, queued ones lost.
            models.Index(
                fields=["status", "send_at"],
                condition=models.Q(status__in=["scheduled", "queued", "sending"]),
                name="idx_drafts_outbox",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.status}: {self.subject[:60]}"


class DraftAttachment(TenantModel):
    """A file of a draft: uploaded, or carried over from the forwarded
    message. The bytes are in the blob store under `blob_key`."""

    draft = models.ForeignKey(Draft, on_delete=models.CASCADE, related_name="attachments")
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    blob_key = models.CharField(max_length=64)

    class Meta:
        db_table = "email_draft_attachments"
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["tenant", "blob_key"], name="idx_draft_attachments_blob")]


class SendQueueItem(TenantModel):
    """The frozen message of a queued draft and the record of its delivery."""

    draft = models.OneToOneField(Draft, on_delete=models.CASCADE, related_name="outbox")
    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    message_id = models.CharField(max_length=255)
    raw_blob_key = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    envelope_from = models.CharField(max_length=320)
    recipients = models.JSONField(default=list)  # envelope addresses, in order

    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # Where the last attempt got to: "", "connect", "envelope", "data" (the
    # message body was being sent: a lost reply from here is `uncertain`), "done".
    phase = models.CharField(max_length=16, blank=True)
    last_reply_code = models.PositiveIntegerField(null=True, blank=True)
    last_reply = models.TextField(blank=True)
    # {address: {"status": "accepted"|"refused", "code": int, "reply": str}}
    recipient_results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The copy appended to the account's Sent folder: "", "appended",
    # "skipped" (the server saves it), "failed".
    sent_copy = models.CharField(max_length=16, blank=True)

    class Meta:
        db_table = "email_send_queue"
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["tenant", "message_id"], name="idx_send_queue_message_id")]


class IdempotencyKey(TenantModel):
    """A request made with an `Idempotency-Key` header: the same key with the
    same body answers with the first result; with another body, 422."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    draft = models.ForeignKey(Draft, null=True, on_delete=models.CASCADE, related_name="+")
    response_status = models.PositiveSmallIntegerField(null=True)

    class Meta:
        db_table = "email_idempotency_keys"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user", "key"], name="uniq_idempotency_key"),
        ]
        indexes = [
            # The purge of expired keys (`compose.idempotency`), every minute.
            models.Index(fields=["tenant", "created_at"], name="idx_idempotency_keys_created"),
        ]
