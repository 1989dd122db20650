"""A tenant's storage quota during a sync: `max_messages` and
`max_stored_bytes` (`emailclient.core.limits`; unset: unlimited, and nothing
is counted).

The tenant's use is counted once when the sync starts (its messages and the
sum of their raw sizes, quarantined messages included: a quarantined message
keeps its raw source, and one whose source was not fetched counts as a
message of no bytes), then grows with what this sync stores. Batches are
cut to what fits; once nothing more fits the sync stores no new mail (flag
changes and expunges still go on, and nothing stored is ever removed to make
room) and leaves the folder's cursor before the first message it did not
store, so the next sync after the quota is raised fetches it. Concurrent syncs
of one tenant count apart, so together they may pass the quota by what each
stores in one run's batches: a soft quota, exact to a batch per sync."""

import uuid
from collections.abc import Sequence

from django.db.models import Count, Q, Sum

from emailclient.core.limits import tenant_limit
from emailclient.core.models import Tenant
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import FetchedMessage
from messages.models import Message, QuarantinedMessage


class StorageQuota:
    def __init__(self, tenant: Tenant) -> None:
        self.tenant_id: uuid.UUID = tenant.id
        self.max_messages: int | None = tenant_limit(tenant, "max_messages")
        self.max_bytes: int | None = tenant_limit(tenant, "max_stored_bytes")
        self.messages: int | None = None  # counted on first use
        self.bytes = 0
        self.exceeded = ""  # why new mail was not stored; "" while it fits

    def _count(self) -> None:
        with tenant_scope(self.tenant_id):
            usage = Message.objects.filter(tenant_id=self.tenant_id).aggregate(
                n=Count("id"), size=Sum("size_bytes")
            )
            # Quarantined mail counts too: its raw source is kept (up to
            # MAIL_MAX_MESSAGE_BYTES each), and anyone may send it.
            held = QuarantinedMessage.objects.filter(tenant_id=self.tenant_id).aggregate(
                n=Count("id"), size=Sum("size_bytes", filter=~Q(raw_blob_key=""))
            )
        self.messages = usage["n"] + held["n"]
        self.bytes = (usage["size"] or 0) + (held["size"] or 0)

    def fit(self, metas: Sequence[FetchedMessage]) -> list[FetchedMessage]:
        """The first of `metas` that fit in the quota, counted as stored. When
        some do not fit, `exceeded` says why."""
        if self.max_messages is None and self.max_bytes is None:
            return list(metas)
        if self.messages is None:
            self._count()
        taken: list[FetchedMessage] = []
        for meta in metas:
            if self.max_messages is not None and (self.messages or 0) + 1 > self.max_messages:
                self.exceeded = (
                    f"Over quota: the tenant stores {self.messages} messages, its limit is "
                    f"{self.max_messages} (max_messages); new mail is not stored until it is raised "
                    "or mail is deleted."
                )
                break
            if self.max_bytes is not None and self.bytes + meta.size > self.max_bytes:
                self.exceeded = (
                    f"Over quota: the tenant stores {self.bytes} bytes of mail, its limit is "
                    f"{self.max_bytes} (max_stored_bytes); new mail is not stored until it is raised "
                    "or mail is deleted."
                )
                break
            taken.append(meta)
            self.messages = (self.messages or 0) + 1
            self.bytes += meta.size
        return taken
