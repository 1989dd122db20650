import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from accounts.models import EmailAccount
from accounts.services import Credentials, account_credentials
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.crypto import encrypt_secret
from emailclient.core.tenancy import tenant_scope


def _reload(account):
    with tenant_scope(account.tenant_id):
        return EmailAccount.objects.get(pk=account.pk)


def test_rotation_reencrypts_every_tenants_credentials(committed_db, tenant_a, tenant_b, settings):
    old_key = settings.CREDENTIAL_ENCRYPTION_KEYS[0]
    a = EmailAccountFactory(tenant=tenant_a, smtp_password_encrypted=encrypt_secret("smtp-a"))
    b = EmailAccountFactory(tenant=tenant_b)
    new_key = Fernet.generate_key().decode()
    settings.CREDENTIAL_ENCRYPTION_KEYS = [new_key, old_key]

    call_command("rotate_credentials")

    settings.CREDENTIAL_ENCRYPTION_KEYS = [new_key]  # the old key is gone now
    assert account_credentials(account=_reload(a)).password == "mail-password"
    assert account_credentials(account=_reload(a), smtp=True).password == "smtp-a"
    assert account_credentials(account=_reload(b)).password == "mail-password"


def test_rotation_with_a_missing_key_changes_nothing(committed_db, tenant_a, settings):
    account = EmailAccountFactory(tenant=tenant_a)
    before = account.password_encrypted
    settings.CREDENTIAL_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError, match="cannot be decrypted"):
        call_command("rotate_credentials")

    assert _reload(account).password_encrypted == before


def test_credentials_never_show_the_password_in_repr():
    assert "hunter2" not in repr(Credentials("u", "hunter2"))
