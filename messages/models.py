from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex, GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import F, Func, Value
from django.db.models.functions import Cast, Left, Lower

from emailclient.core.models import TenantModel

# Weighted full-text vector: subject (A) above sender (B) above body (C).
# Bodies are cut at 100,000 characters: tsvector has a 1 MB ceiling.
SEARCH_VECTOR = (
    SearchVector("subject", weight="A", config="english")
    + SearchVector("from_name", "from_address", weight="B", config="english")
    + SearchVector(Left("text_body", 100_000), weight="C", config="english")
)


def recipients_text(field: str) -> Cast:
    """The names and addresses of a recipient list (`to`, `cc`) as one text,
    '["Rita Reader", "reader@example.com", ...]': what `to:` and `cc:`
    searches match, and what their trigram indexes are built on. The keys are
    left out, so `to:name` does not match every message."""
    path = Func(F(field), Value("$[*].*"), function="jsonb_path_query_array", output_field=models.JSONField())
    return Cast(path, models.TextField())


def addresses_key(field: str) -> Cast:
    """The lower-cased addresses of a recipient list (`to`, `cc`) as a JSON
    array, '["reader@example.com", ...]': what `to:` and `cc:` with a whole
    address match (containment, through a GIN index)."""
    path = Func(
        F(field), Value("$[*].address"), function="jsonb_path_query_array", output_field=models.JSONField()
    )
    return Cast(Lower(Cast(path, models.TextField())), models.JSONField())


class Trigrams(Func):
    """`array_to_tsvector(show_trgm(a || ' ' || b ...))`: the pg_trgm trigrams
    of the texts as a tsvector, one lexeme per trigram. A substring search
    (`subject:`, `from:`, `to:`, `cc:`) matches it with `@@` (ts_match_vq,
    LEAKPROOF), which its GIN index serves under row-level security, and
    checks the substring itself with ILIKE only on the tenant's candidates:
    ILIKE is not leakproof (a pattern ending in an escape raises an error
    only when a row's text matches the rest), so it must not run before the
    tenant policy, and so cannot be an index condition there."""

    # Of the first 10,000 characters only (`left`): a tsvector holds at most
    # 1 MB of lexemes, and a subject of 90,000 distinct CJK characters (the
    # header limit allows 256 KB) would have made about that many trigrams
    # of 8 bytes each. A substring further in is found only by walking.
    function = "show_trgm"
    template = "array_to_tsvector(show_trgm(left(%(expressions)s, 10000)))"
    arg_joiner = " || ' ' || "
    output_field = SearchVectorField()


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

    The database changes at once; the sync side's write-back replays the account's
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
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="changes"
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


class Message(TenantModel):
    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="messages", db_index=False)

    # Server identity: UID is unique only within (folder, UIDVALIDITY).
    imap_uid = models.BigIntegerField(null=True, blank=True)
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    modseq = models.BigIntegerField(null=True, blank=True)
    pop3_uidl = models.CharField(max_length=70, blank=True)

    # RFC 5322 headers, decoded.
    # Normalised leniently (messages.parsing.message_ids), at most 250 characters.
    message_id = models.CharField(max_length=998, blank=True)
    # The message had no Message-ID: `message_id` was made from its raw bytes.
    message_id_synthetic = models.BooleanField(default=False, db_default=False)
    in_reply_to = models.CharField(max_length=998, blank=True)
    references = ArrayField(models.CharField(max_length=998), default=list, blank=True)
    from_address = models.CharField(max_length=998, blank=True)
    from_name = models.CharField(max_length=998, blank=True)
    to = models.JSONField(default=list, blank=True, help_text='[{"name": ..., "address": ...}]')
    cc = models.JSONField(default=list, blank=True)
    bcc = models.JSONField(default=list, blank=True)
    reply_to = models.JSONField(default=list, blank=True)
    subject = models.TextField(blank=True)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True, help_text="As received; sanitised when served.")
    snippet = models.CharField(max_length=200, blank=True)

    # State.
    is_read = models.BooleanField(default=False)
    is_flagged = models.BooleanField(default=False)
    is_draft = models.BooleanField(default=False)
    is_answered = models.BooleanField(default=False)
    flags = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    has_attachments = models.BooleanField(default=False)
    thread_id = models.UUIDField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(null=True, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the raw source.")
    raw_blob_key = models.CharField(max_length=64, blank=True)
    is_deleted = models.BooleanField(default=False)
    deleted_at = models.DateTimeField(null=True, blank=True)

    # Filled by `messages.indexing` after the sync commits (NULL until then):
    # to_tsvector is most of an insert's cost, and the sync must not wait on it.
    search_vector = SearchVectorField(null=True, blank=True, editable=False)
    # What `to:` and `cc:` search: plain columns, so that their trigram
    # indexes serve under row-level security (an expression's functions are
    # not LEAKPROOF, and PostgreSQL will not use an index on it there).
    to_text = models.GeneratedField(
        expression=recipients_text("to"), output_field=models.TextField(), db_persist=True
    )
    cc_text = models.GeneratedField(
        expression=recipients_text("cc"), output_field=models.TextField(), db_persist=True
    )
    # What `from:`, `to:` and `cc:` with a whole address match: equality and
    # containment on plain columns, indexed (a substring match of a whole
    # address through trigrams read every row: 2 s at 1,000,000 messages).
    from_key = models.GeneratedField(
        expression=Lower("from_address"), output_field=models.TextField(), db_persist=True
    )
    to_addresses = models.GeneratedField(
        expression=addresses_key("to"), output_field=models.JSONField(), db_persist=True
    )
    cc_addresses = models.GeneratedField(
        expression=addresses_key("cc"), output_field=models.JSONField(), db_persist=True
    )
    # What substring searches find their candidates by (see `Trigrams`).
    subject_trigrams = models.GeneratedField(
        expression=Trigrams("subject"), output_field=SearchVectorField(), db_persist=True
    )
    from_trigrams = models.GeneratedField(
        expression=Trigrams("from_address", "from_name"), output_field=SearchVectorField(), db_persist=True
    )
    # (A generated column cannot read another: `to_text`'s expression again.)
    to_trigrams = models.GeneratedField(
        expression=Trigrams(recipients_text("to")), output_field=SearchVectorField(), db_persist=True
    )
    cc_trigrams = models.GeneratedField(
        expression=Trigrams(recipients_text("cc")), output_field=SearchVectorField(), db_persist=True
    )

    class Meta:
        db_table = "email_messages"
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "folder", "uidvalidity", "imap_uid"], name="uniq_message_tenant_folder_uid"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "account"], name="idx_messages_tenant_account"),
            # A folder's page: keyset over (received_at, id), so a page deep in
            # messages that share one date is still read straight off the index.
            models.Index(fields=["folder", "-received_at", "-id"], name="idx_messages_folder_page"),
            # Newest-first across a tenant (search, the unfiltered list): a broad
            # search walks it and stops at a page instead of sorting every match.
            models.Index(
                fields=["tenant", "-received_at", "-id"],
                condition=models.Q(is_deleted=False),
                name="idx_messages_tenant_received",
            ),
            # Newest-first in one account: a member's searches, `account:`.
            models.Index(
                fields=["account", "-received_at", "-id"],
                condition=models.Q(is_deleted=False),
                name="idx_messages_account_received",
            ),
            models.Index(
                fields=["tenant", "from_key", "-received_at", "-id"],
                condition=models.Q(is_deleted=False),
                name="idx_messages_from_key",
            ),
            models.Index(fields=["thread_id"], name="idx_messages_thread"),
            models.Index(fields=["account", "is_read"], name="idx_messages_account_read"),
            models.Index(fields=["imap_uid", "folder"], name="idx_messages_imap_uid"),
            models.Index(fields=["message_id", "account"], name="idx_messages_message_id"),
            models.Index(
                fields=["folder", "-received_at", "-id"],
                condition=models.Q(is_read=False, is_deleted=False),
                name="idx_messages_folder_unread",
            ),
            models.Index(
                fields=["account", "-received_at"],
                condition=models.Q(is_flagged=True, is_deleted=False),
                name="idx_messages_flagged",
            ),
            GinIndex(fields=["search_vector"], name="gin_messages_search"),
            models.Index(
                fields=["tenant"],
                condition=models.Q(search_vector__isnull=True),
                name="idx_messages_unindexed",
            ),
            GinIndex(fields=["subject_trigrams"], name="gin_messages_subject_trgm"),
            GinIndex(fields=["from_trigrams"], name="gin_messages_from_trgm"),
            GinIndex(fields=["to_trigrams"], name="gin_messages_to_trgm"),
            GinIndex(fields=["cc_trigrams"], name="gin_messages_cc_trgm"),
            GinIndex(fields=["to_addresses"], opclasses=["jsonb_path_ops"], name="gin_messages_to_addresses"),
            GinIndex(fields=["cc_addresses"], opclasses=["jsonb_path_ops"], name="gin_messages_cc_addresses"),
            BrinIndex(fields=["received_at"], name="brin_messages_received"),
        ]

    def __str__(self) -> str:
        return self.subject or self.message_id


class Attachment(TenantModel):
    """An attachment or inline part. The bytes live in blob storage under their
    SHA-256 (`content_hash`), stored once per tenant however often they recur."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments", db_index=False)
    filename = models.CharField(max_length=500, blank=True)
    mime_type = models.CharField(max_length=255, default="application/octet-stream")
    size_bytes = models.PositiveBigIntegerField(default=0)
    content_id = models.CharField(max_length=998, blank=True)
    is_inline = models.BooleanField(default=False)
    content_hash = models.CharField(max_length=64)

    class Meta:
        db_table = "email_attachments"
        ordering = ["message_id", "created_at"]
        indexes = [
            models.Index(fields=["message"], name="idx_attachments_message"),
            models.Index(fields=["tenant", "content_hash"], name="idx_attachments_hash"),
        ]

    def __str__(self) -> str:
        return self.filename or self.content_hash


class QuarantinedMessage(TenantModel):
    """A server message the sync could not store: over a limit, or not mail.
    It holds its UID so that the folder's UID accounting stays exact, and its
    raw source (when it was fetched) so it can be downloaded and re-parsed."""

    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="quarantined")
    imap_uid = models.BigIntegerField()
    uidvalidity = models.BigIntegerField()
    reason = models.TextField()
    size_bytes = models.PositiveBigIntegerField(default=0)
    raw_blob_key = models.CharField(max_length=64, blank=True)

    class Meta:
        db_table = "email_quarantine"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "folder", "uidvalidity", "imap_uid"],
                name="uniq_quarantine_tenant_folder_uid",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "account"], name="idx_quarantine_tenant_account")]

    def __str__(self) -> str:
        return f"uid {self.imap_uid}: {self.reason}"


class Pop3Uidl(TenantModel):
    """A message on a POP3 server, by its unique id, and the UID the sync gave
    it in the account's INBOX (`mailboxes.sync.pop3`): POP3 mail goes through
    the IMAP pipeline, cursor, quarantine and in-flight marks under these
    UIDs, in a folder of UIDVALIDITY 0 (which no IMAP server gives). A row is
    committed before its message is downloaded, and a UID is never given
    twice: the next one is kept in the folder's `sync_token`.

    `uidl` depends on the identity mode the folder's state records: the
    server's UIDL ("#" and its hash if over 70 characters), or, from a server
    without UIDL, "~" and a hash of the whole message ("#2", "#3"...
    appended for byte-identical copies). A row whose unique id the server stops listing
    goes once two listings in a row lack it; its `Message` stays, naming the
    id in `pop3_uidl`. Another endpoint (protocol, host, port, user), an IMAP
    past or another identity mode starts a new epoch: every row goes and new
    UIDs are given past all earlier ones, while the stored messages no row
    names any more form the rematch pool, so the same message listed again
    gets its new UID in its old row rather than being stored twice.

    `created_at` is when the unique id was mapped in this epoch; deleting on
    the server after `pop3_delete_after_days` counts from the stored
    message's (or quarantined one's) `created_at`, not from this row's."""

    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="+", db_index=False)
    uidl = models.CharField(max_length=70)
    uid = models.BigIntegerField()

    class Meta:
        db_table = "pop3_uidls"
        ordering = ["folder_id", "uid"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "folder", "uidl"], name="uniq_pop3_uidl_tenant_folder"),
            models.UniqueConstraint(fields=["tenant", "folder", "uid"], name="uniq_pop3_uid_tenant_folder"),
        ]
        indexes = [models.Index(fields=["folder", "uid"], name="idx_pop3_uidls_folder_uid")]

    def __str__(self) -> str:
        return f"{self.uidl} -> uid {self.uid}"


class ThreadRef(TenantModel):
    """Which thread a Message-ID belongs to, per account: the union-find index
    behind threading. Holds ids of messages not (yet) seen too, the ghost
    parents named by References, so a reply that arrives first and its
    parent that arrives later meet in one thread."""

    account = models.ForeignKey(
        "accounts.EmailAccount", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    message_id = models.CharField(max_length=250)
    thread_id = models.UUIDField()

    class Meta:
        db_table = "email_thread_refs"
        ordering = ["account_id", "message_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "account", "message_id"], name="uniq_threadref_tenant_account_msgid"
            ),
        ]
        indexes = [models.Index(fields=["account", "thread_id"], name="idx_threadref_thread")]

    def __str__(self) -> str:
        return f"{self.message_id} -> {self.thread_id}"
