import factory

from accounts.models import EmailAccount
from emailclient.core.crypto import encrypt_secret
from emailclient.core.tests.factories import TenantFactory, TenantScopedFactory, UserFactory


class EmailAccountFactory(TenantScopedFactory):
    class Meta:
        model = EmailAccount

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    account_name = factory.Sequence(lambda n: f"Mailbox {n}")
    email_address = factory.Sequence(lambda n: f"person{n}@example.com")
    protocol = "imap"
    hostname = "imap.example.com"
    port = 993
    encryption = "tls"
    username = factory.LazyAttribute(lambda o: o.email_address)
    password_encrypted = factory.LazyFunction(lambda: encrypt_secret("mail-password"))
