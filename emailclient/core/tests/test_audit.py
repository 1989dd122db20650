"""The audit log outlives what it records: the runtime role may only append
to it, and deleting a user keeps the entries that name them. Every action
and object type the code records is in the known lists the admin filters by
(`emailclient.core.audit`), read from the source."""

import ast
import contextlib
import functools
import importlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from emailclient.core.audit import AUDIT_ACTIONS, AUDIT_OBJECT_TYPES
from emailclient.core.models import AuditLog
from emailclient.core.services import audit_log_record
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory


def _entry(tenant, actor) -> AuditLog:
    with tenant_scope(tenant.id):
        return audit_log_record(
            tenant=tenant, actor=actor, action="account.create", object_type="email_account", object_id=None
        )


def test_deleting_a_user_keeps_their_audit_entries_and_who_it_was(committed_db, tenant_a):
    former = UserFactory(username="former")
    entry = _entry(tenant_a, former)
    user_id = former.id

    former.delete()  # through the runtime role, as the admin does

    with tenant_scope(tenant_a.id):
        kept = AuditLog.objects.get(id=entry.id)
    assert kept.actor_id == user_id


@pytest.mark.parametrize(
    "statement",
    ["UPDATE email_audit_log SET action = 'x' WHERE id = %s", "DELETE FROM email_audit_log WHERE id = %s"],
)
def test_the_runtime_role_cannot_change_or_delete_an_entry(committed_db, tenant_a, user_a, statement):
    entry = _entry(tenant_a, user_a)

    with (
        pytest.raises(ProgrammingError, match="permission denied"),
        tenant_scope(tenant_a.id),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [entry.id])


# The apps whose code records audit entries, and the two functions that write them.
APPS = ("accounts", "mailboxes", "messages", "compose", "emailclient")
WRITERS = {"audit_log_record", "audit_log_record_many"}


Function = ast.FunctionDef | ast.AsyncFunctionDef


class Unresolved(Exception):
    pass


def assignments(function: Function, name: str) -> list[ast.expr]:
    """The values assigned to `name` in the function."""
    values = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            values.append(value)
    return values


class Source:
    """One module's syntax tree, to find the strings an argument may be.

    A string, an f-string or a conditional of them is read as written; a
    name is followed to its assignments in the function, to the arguments of
    the function's calls in the module when it is a parameter (how
    `messages.services._audit` passes its action on), and to the module's
    value otherwise (`Status.SENT`). Anything else is refused: a new way of
    passing an action fails the test until it is read here, rather than
    passing it unchecked."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        self.parent = {child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)}
        self.resolving: set[ast.AST] = set()

    @functools.cached_property
    def module(self) -> ModuleType:
        """Imported only to read a name's value (every module would import the production settings too)."""
        relative = self.path.relative_to(settings.BASE_DIR).with_suffix("")
        return importlib.import_module(".".join(relative.parts))

    def function_of(self, node: ast.AST) -> Function | None:
        while (node := self.parent.get(node)) is not None:
            if isinstance(node, Function):
                return node
        return None

    def calls(self) -> Iterator[ast.Call]:
        return (node for node in ast.walk(self.tree) if isinstance(node, ast.Call))

    def strings(self, node: ast.expr, function: Function | None) -> set[str]:
        if node in self.resolving:  # a cycle adds nothing new
            return set()
        self.resolving.add(node)
        try:
            return self._strings(node, function)
        finally:
            self.resolving.discard(node)

    def _strings(self, node: ast.expr, function: Function | None) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.IfExp):
            return self.strings(node.body, function) | self.strings(node.orelse, function)
        if isinstance(node, ast.JoinedStr):
            parts = [
                self.strings(part.value, function) if isinstance(part, ast.FormattedValue) else {part.value}
                for part in node.values
            ]
            return {"".join(chosen) for chosen in itertools.product(*parts)}
        if isinstance(node, ast.Name) and function is not None:
            assigned = [self.strings(value, function) for value in assignments(function, node.id)]
            passed = self.arguments(function, node.id)
            if assigned or passed is not None:
                return set().union(*assigned, *(passed or []))
        if isinstance(node, ast.Name | ast.Attribute) and not self.bound_in(function, node):
            with contextlib.suppress(NameError, AttributeError):
                value = eval(ast.unparse(node), vars(self.module))  # noqa: S307 (the module's own names)
                if isinstance(value, str):
                    return {str(value)}
        raise Unresolved(f"{self.path}:{node.lineno}: {ast.unparse(node)}")

    def bound_in(self, function: Function | None, node: ast.expr) -> bool:
        """Whether the name `node` starts with is the function's own (its
        value is not the module's)."""
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        return (
            function is not None
            and isinstance(root, ast.Name)
            and (self.parameter(function, root.id) is not None or bool(assignments(function, root.id)))
        )

    @staticmethod
    def parameter(function: Function, name: str) -> tuple[int | None, ast.expr | None] | None:
        """The parameter's position (None if keyword-only) and default, or None if it is no parameter."""
        args = function.args
        positional = [*args.posonlyargs, *args.args]
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        for index, arg in enumerate(positional):
            if arg.arg == name:
                return index, defaults[index]
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
            if arg.arg == name:
                return None, default
        return None

    def arguments(self, function: Function, name: str) -> list[set[str]] | None:
        """What the function's calls in this module pass as its parameter
        `name`, and its default; None if `name` is no parameter."""
        found = self.parameter(function, name)
        if found is None:
            return None
        index, default = found
        passed = [self.strings(default, None)] if default is not None else []
        for call in self.calls():
            callee = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
            if callee != function.name:
                continue
            if any(isinstance(arg, ast.Starred) for arg in call.args) or any(
                k.arg is None for k in call.keywords
            ):
                raise Unresolved(f"{self.path}:{call.lineno}: {ast.unparse(call)}")
            offset = (
                1
                if isinstance(call.func, ast.Attribute)
                and function.args.args[:1]
                and function.args.args[0].arg in ("self", "cls")
                else 0
            )
            keyword = [k.value for k in call.keywords if k.arg == name]
            given = keyword or (
                [call.args[index - offset]] if index is not None and index - offset < len(call.args) else []
            )
            passed += [self.strings(value, self.function_of(call)) for value in given]
        if not passed:
            raise Unresolved(f"{self.path}:{function.lineno}: no call of {function.name} passes {name}")
        return passed


def recorded(argument: str) -> set[str]:
    """Every value the code may pass as the writers' `argument`."""
    values: set[str] = set()
    for app in APPS:
        for path in sorted((Path(settings.BASE_DIR) / app).rglob("*.py")):
            if {"tests", "migrations"} & set(path.parts):
                continue
            source = Source(path)
            for call in source.calls():
                writer = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
                function = source.function_of(call)
                if writer not in WRITERS or (function is not None and function.name in WRITERS):
                    continue  # not a writer, or one writer passing its own argument to the other
                [value] = [k.value for k in call.keywords if k.arg == argument]
                values |= source.strings(value, function)
    return values


def test_every_action_and_object_type_the_code_records_is_known():
    actions, object_types = recorded("action"), recorded("object_type")

    assert len(set(AUDIT_ACTIONS)) == len(AUDIT_ACTIONS)
    assert actions - set(AUDIT_ACTIONS) == set(), "record them in emailclient/core/audit.py"
    assert set(AUDIT_ACTIONS) - actions == set(), "nothing records these any more"
    assert set(AUDIT_OBJECT_TYPES) == object_types
