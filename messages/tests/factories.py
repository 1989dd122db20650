import datetime
import uuid

import factory
from django.utils import timezone

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tests.factories import TenantScopedFactory
from messages.models import Attachment, Folder, Message


class FolderFactory(TenantScopedFactory):
    class Meta:
        model = Folder

    account = factory.SubFactory(EmailAccountFactory)
    tenant = factory.SelfAttribute("account.tenant")
    name = factory.Sequence(lambda n: f"Folder {n}")
    type = "custom"
    delimiter = "/"
    uidvalidity = 1


class MessageFactory(TenantScopedFactory):
    """A stored message as the sync leaves it (search vector not yet filled:
    call `messages.indexing.search_index_pending()` for that)."""

    class Meta:
        model = Message

    folder = factory.SubFactory(FolderFactory)
    account = factory.SelfAttribute("folder.account")
    tenant = factory.SelfAttribute("folder.tenant")
    uidvalidity = factory.SelfAttribute("folder.uidvalidity")
    imap_uid = factory.Sequence(lambda n: n + 1)
    message_id = factory.LazyFunction(lambda: f"{uuid.uuid4().hex}@example.com")  # as the parser stores it
    from_address = "sender@example.com"
    from_name = "Sam Sender"
    to = factory.LazyFunction(lambda: [{"name": "Rita Reader", "address": "reader@example.com"}])
    subject = factory.Sequence(lambda n: f"Message {n}")
    text_body = "Hello,\n\nthis is a message.\n"
    snippet = factory.LazyAttribute(lambda o: o.text_body[:200])
    thread_id = factory.LazyFunction(uuid.uuid4)
    received_at = factory.Sequence(lambda n: timezone.now() - datetime.timedelta(minutes=n))
    sent_at = factory.SelfAttribute("received_at")
    size_bytes = 1000


class AttachmentFactory(TenantScopedFactory):
    class Meta:
        model = Attachment

    message = factory.SubFactory(MessageFactory)
    tenant = factory.SelfAttribute("message.tenant")
    filename = "report.pdf"
    mime_type = "application/pdf"
    size_bytes = 10
    content_hash = "0" * 64
