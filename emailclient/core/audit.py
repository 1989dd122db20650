"""What the audit log records: every action and object type the service
writes, listed here so that the admin filters the log by a known list
rather than by its distinct values, which only a scan of every row (tens of
millions) would give. A new action or object type is added here with the
code that records it: a test reads the source for every value passed to
`audit_log_record` or `audit_log_record_many` and fails on one not listed
(and on one listed that nothing records)."""

AUDIT_ACTIONS: tuple[str, ...] = (
    # accounts.services; the purge in mailboxes.purge.
    "account.create",
    "account.update",
    "account.delete",
    "account.purge",
    # messages.services; a write-back given up in mailboxes.writeback.
    "message.update",
    "message.move",
    "message.delete",
    "message.change_failed",
    # compose.services; a send's outcome in compose.outbox (retry: queued again).
    "compose.draft.create",
    "compose.draft.delete",
    "compose.send.queued",
    "compose.send.cancelled",
    "compose.send.retry",
    "compose.send.sent",
    "compose.send.failed",
    "compose.send.uncertain",
)

AUDIT_OBJECT_TYPES: tuple[str, ...] = ("email_account", "message", "draft")
