import pytest
from django.core.management import CommandError, call_command

from emailclient.core.models import Tenant, TenantMembership
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_createtenant(capsys):
    call_command("createtenant", "acme", "--name", "Acme Corp")
    tenant = Tenant.objects.get(slug="acme")
    assert tenant.name == "Acme Corp"
    assert "Created tenant acme" in capsys.readouterr().out


def test_createtenant_refuses_duplicates_and_bad_slugs():
    call_command("createtenant", "acme")
    with pytest.raises(CommandError, match="already exists"):
        call_command("createtenant", "acme")
    with pytest.raises(CommandError, match="Invalid slug"):
        call_command("createtenant", "not a slug!")


def test_addtenantmember_creates_and_changes_roles():
    call_command("createtenant", "acme")
    call_command("addtenantmember", "acme", "dora", "--create", "--password", "pw-123456", "--role", "admin")
    tenant = Tenant.objects.get(slug="acme")
    with tenant_scope(tenant.id):
        membership = TenantMembership.objects.get(tenant=tenant, user__username="dora")
    assert membership.role == "admin"
    assert membership.user.check_password("pw-123456")

    call_command("addtenantmember", "acme", "dora", "--role", "member")
    with tenant_scope(tenant.id):
        assert TenantMembership.objects.get(tenant=tenant).role == "member"


def test_addtenantmember_clear_errors():
    call_command("createtenant", "acme")
    with pytest.raises(CommandError, match="Unknown tenant 'nope'"):
        call_command("addtenantmember", "nope", "dora")
    with pytest.raises(CommandError, match="Unknown user 'ghost'"):
        call_command("addtenantmember", "acme", "ghost")
    with pytest.raises(CommandError, match="--create needs --password"):
        call_command("addtenantmember", "acme", "ghost", "--create")
    UserFactory(username="erin")
    with pytest.raises(CommandError, match="only to a user made with --create"):
        call_command("addtenantmember", "acme", "erin", "--password", "x")


def test_seeddemo_refuses_outside_debug():
    with pytest.raises(CommandError, match="only with the local"):
        call_command("seeddemo")
