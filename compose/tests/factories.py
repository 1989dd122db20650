import factory

from accounts.tests.factories import EmailAccountFactory
from compose.models import Draft, DraftAttachment
from emailclient.core.tests.factories import TenantScopedFactory


class DraftFactory(TenantScopedFactory):
    class Meta:
        model = Draft

    account = factory.SubFactory(EmailAccountFactory, smtp_hostname="smtp.example.com")
    tenant = factory.SelfAttribute("account.tenant")
    user = factory.SelfAttribute("account.user")
    to = factory.LazyFunction(lambda: [{"name": "Rita Reader", "address": "reader@example.com"}])
    subject = factory.Sequence(lambda n: f"Draft {n}")
    text_body = "Hello,\n\nthis is a draft.\n"


class DraftAttachmentFactory(TenantScopedFactory):
    class Meta:
        model = DraftAttachment

    draft = factory.SubFactory(DraftFactory)
    tenant = factory.SelfAttribute("draft.tenant")
    filename = "notes.txt"
    content_type = "text/plain"
    size_bytes = 10
    blob_key = "0" * 64
