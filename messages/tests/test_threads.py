"""Threading by Message-ID, In-Reply-To and References."""

import importlib
import uuid
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.db import connection

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tenancy import tenant_scope
from messages.models import Folder, Message, ThreadRef
from messages.parsing import parse_message
from messages.threads import _subject_key, assign_threads, base_subject

pytestmark = pytest.mark.django_db


@pytest.fixture
def account(tenant_a):
    return EmailAccountFactory(tenant=tenant_a)


@pytest.fixture
def folder(account):
    with tenant_scope(account.tenant_id):
        return Folder.objects.create(tenant_id=account.tenant_id, account=account, name="INBOX", type="inbox")


def store(account, folder, *specs) -> list[Message]:
    """Store messages in one batch, as the sync does."""
    messages = [
        Message(
            tenant_id=account.tenant_id,
            account=account,
            folder=folder,
            subject=spec.get("subject", ""),
            message_id=spec["id"],
            in_reply_to=spec.get("parent", ""),
            references=spec.get("refs", []),
        )
        for spec in specs
    ]
    with tenant_scope(account.tenant_id):
        assign_threads(tenant_id=account.tenant_id, account_id=account.id, messages=messages)
        Message.objects.bulk_create(messages)
    return messages


def threads(account) -> dict[str, str]:
    with tenant_scope(account.tenant_id):
        return {
            m: str(t)
            for m, t in Message.objects.filter(account=account).values_list("message_id", "thread_id")
        }


def test_reply_joins_its_parent(account, folder):
    store(account, folder, {"id": "a@x"})
    store(account, folder, {"id": "b@x", "parent": "a@x", "refs": ["a@x"]})
    t = threads(account)
    assert t["a@x"] == t["b@x"]


def test_reply_before_parent_then_parent_joins(account, folder):
    store(account, folder, {"id": "c@x", "parent": "b@x", "refs": ["a@x", "b@x"]})
    store(account, folder, {"id": "a@x"})  # the ghost grandparent arrives
    store(account, folder, {"id": "b@x", "parent": "a@x", "refs": ["a@x"]})
    t = threads(account)
    assert t["a@x"] == t["b@x"] == t["c@x"]


def test_two_threads_merge_when_a_message_links_them(account, folder):
    store(account, folder, {"id": "a@x"}, {"id": "b@x"})
    t = threads(account)
    assert t["a@x"] != t["b@x"]
    store(account, folder, {"id": "c@x", "refs": ["a@x", "b@x"]})
    t = threads(account)
    assert t["a@x"] == t["b@x"] == t["c@x"]


def test_reference_loops_do_not_hang_or_split(account, folder):
    store(
        account,
        folder,
        {"id": "a@x", "parent": "b@x", "refs": ["b@x"]},
        {"id": "b@x", "parent": "a@x", "refs": ["a@x"]},
        {"id": "c@x", "parent": "c@x", "refs": ["c@x"]},  # its own parent
    )
    t = threads(account)
    assert t["a@x"] == t["b@x"] != t["c@x"]


def test_same_batch_chain(account, folder):
    store(account, folder, {"id": "a@x"}, {"id": "b@x", "parent": "a@x"}, {"id": "c@x", "parent": "b@x"})
    assert len(set(threads(account).values())) == 1


def test_subject_fallback_only_without_references(account, folder):
    store(account, folder, {"id": "a@x", "subject": "Quarterly numbers"})
    store(account, folder, {"id": "b@x", "subject": "Re: Quarterly numbers"})  # no references: fallback
    store(account, folder, {"id": "c@x", "subject": "Quarterly numbers"})  # not a reply: a new thread
    store(account, folder, {"id": "d@x", "subject": "Re: Quarterly numbers", "parent": "zz@x"})  # has refs
    t = threads(account)
    assert t["b@x"] == t["a@x"]
    assert t["c@x"] != t["a@x"]
    assert t["d@x"] not in (t["a@x"], t["c@x"])


def test_threads_are_per_account(tenant_a, folder, account):
    other = EmailAccountFactory(tenant=tenant_a)
    with tenant_scope(tenant_a.id):
        other_folder = Folder.objects.create(tenant_id=tenant_a.id, account=other, name="INBOX")
    store(account, folder, {"id": "a@x"})
    store(other, other_folder, {"id": "b@x", "parent": "a@x"})
    assert threads(account)["a@x"] != threads(other)["b@x"]


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        ("Re: Hello", "hello", True),
        ("RE: Re: [list] Hello", "hello", True),
        ("Fwd: Hi", "hi", True),
        ("AW: Termin", "termin", True),
        ("Hello", "hello", False),
        ("[list] Hello", "hello", False),
    ],
)
def test_base_subject(subject, base, reply):
    assert base_subject(subject) == (base, reply)


def test_no_header_can_name_a_subjects_key(account, folder):
    """Subject keys share the thread index with Message-IDs. A sender who
    writes a subject's key as a reference (`<subject:...>`, `<subject: ...>`:
    the parser removes the space) must not join that subject's thread."""
    key = _subject_key(base_subject("Quarterly figures")[0])
    header = f"References: <{key}> <{key.replace(' ', '')}>\r\nIn-Reply-To: <{key}>\r\n"
    parsed = parse_message(
        b"From: mallory@evil.example\r\nSubject: Quarterly figures\r\nMessage-ID: <m@evil.example>\r\n"
        + header.encode()
        + b"\r\nhello\r\n"
    )
    store(account, folder, {"id": "q@x", "subject": "Quarterly figures"})
    store(account, folder, {"id": "r@x", "subject": "Re: Quarterly figures"})  # joins by subject
    store(account, folder, {"id": parsed.message_id, "parent": parsed.in_reply_to, "refs": parsed.references})

    t = threads(account)
    assert t["q@x"] == t["r@x"]
    assert t["m@evil.example"] != t["q@x"]


def test_old_subject_keys_are_rewritten_in_every_tenant(tenant_a, tenant_b):
    """Migration mail.0016: each tenant's `subject:<hex>` keys gain the space,
    under RLS, and go back on reversal; Message-IDs are left alone."""
    migration = importlib.import_module("messages.migrations.0016_subject_keys_with_a_space")
    hexes = {tenant_a: "a" * 40, tenant_b: "b" * 40}
    for tenant, hex_ in hexes.items():
        account = EmailAccountFactory(tenant=tenant)
        with tenant_scope(tenant.id):
            for message_id in (f"subject:{hex_}", "subject:not-a-key@x", "plain@x"):
                ThreadRef.objects.create(
                    tenant=tenant, account=account, message_id=message_id, thread_id=uuid.uuid4()
                )

    def keys() -> dict:
        found = {}
        for tenant in hexes:
            with tenant_scope(tenant.id):
                found[tenant.slug] = sorted(ThreadRef.objects.values_list("message_id", flat=True))
        return found

    before = keys()
    editor = SimpleNamespace(connection=connection)
    migration.forwards(django_apps, editor)
    assert keys() == {
        tenant.slug: sorted([f"subject: {hex_}", "subject:not-a-key@x", "plain@x"])
        for tenant, hex_ in hexes.items()
    }
    migration.backwards(django_apps, editor)
    assert keys() == before
