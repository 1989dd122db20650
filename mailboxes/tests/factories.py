import factory

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tests.factories import TenantScopedFactory
from mailboxes.models import Folder


class FolderFactory(TenantScopedFactory):
    class Meta:
        model = Folder

    account = factory.SubFactory(EmailAccountFactory)
    tenant = factory.SelfAttribute("account.tenant")
    name = factory.Sequence(lambda n: f"Folder {n}")
    type = "custom"
    delimiter = "/"
    uidvalidity = 1
