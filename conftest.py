"""Suite-wide fixtures.

The database is created and migrated by the owner role (as in production),
then every test talks to it through the `default` alias: the runtime role,
subject to row-level security. pytest-django's own test-database creation is
replaced, because the runtime role may not create databases or tables.
"""

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.db import connections
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.dbsetup import setup_database
from emailclient.core.tests.factories import MembershipFactory, TenantFactory, UserFactory
from messages.blobs import default_store
from messages.tests.factories import FolderFactory

# Tables whose rows are data, emptied after each `committed_db` test.
KEEP_TABLES = {"django_migrations", "django_content_type", "auth_permission"}


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    with django_db_blocker.unblock():
        setup_database(
            superuser_url=settings.DATABASE_SUPERUSER_URL,
            databases=settings.DATABASES,
            recreate=True,
            log=lambda line: None,
        )
        call_command("migrate", database="owner", verbosity=0, interactive=False)
        for alias in ("owner", "admin"):
            connections[alias].close()


@pytest.fixture
def committed_db(django_db_setup, django_db_blocker):
    """Real commits, no wrapping transaction: for tests of transaction
    boundaries and of other connections (admin alias). Empties the data
    tables afterwards, as the owner (TRUNCATE is not the runtime role's)."""
    with django_db_blocker.unblock():
        yield
        with connections["owner"].cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [name for (name,) in cursor.fetchall() if name not in KEEP_TABLES]
            cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
        for alias in connections:
            connections[alias].close()


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate-limit counters live in Redis; every test starts from zero."""
    cache.clear()


@pytest.fixture
def tenant_a():
    return TenantFactory(slug="tenant-a")


@pytest.fixture
def tenant_b():
    return TenantFactory(slug="tenant-b")


@pytest.fixture
def user_a(tenant_a):
    user = UserFactory(username="alice")
    MembershipFactory(tenant=tenant_a, user=user, role="member")
    return user


@pytest.fixture
def admin_a(tenant_a):
    user = UserFactory(username="anna-admin")
    MembershipFactory(tenant=tenant_a, user=user, role="admin")
    return user


@pytest.fixture
def user_b(tenant_b):
    user = UserFactory(username="bob")
    MembershipFactory(tenant=tenant_b, user=user, role="member")
    return user


def bearer_client(user, tenant=None) -> APIClient:
    """An API client holding a real access token for `user`, naming `tenant`."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    if tenant is not None:
        client.credentials(
            HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}",
            HTTP_X_TENANT_ID=tenant.slug,
        )
    return client


@pytest.fixture
def account_a(tenant_a, user_a):
    """Alice's mail account in tenant A."""
    return EmailAccountFactory(tenant=tenant_a, user=user_a)


@pytest.fixture
def inbox_a(account_a):
    return FolderFactory(account=account_a, name="INBOX", type="inbox")


@pytest.fixture
def blobs(settings, tmp_path):
    """A blob store of the test's own."""
    settings.BLOB_STORAGE_DIR = tmp_path / "blobs"
    return default_store()


@pytest.fixture
def client_a(user_a, tenant_a):
    return bearer_client(user_a, tenant_a)


@pytest.fixture
def client_admin_a(admin_a, tenant_a):
    return bearer_client(admin_a, tenant_a)


@pytest.fixture
def client_b(user_b, tenant_b):
    return bearer_client(user_b, tenant_b)


@pytest.fixture
def api_client():
    return APIClient()
