"""The operators' admin, the browsable API and the API docs, in a real browser
against live servers: what a person sees, and that no page loads anything from
another host. Screenshots go to var/screenshots/ (see conftest.py)."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def log_in(visit, path: str, username: str) -> None:
    page = visit.goto(path)
    page.fill("#id_username", username)
    page.fill("#id_password", "browser-test-password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def operation_paths(page) -> list[str]:
    """Swagger UI's listed operation paths (it puts zero-width spaces into them)."""
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    return [text.replace("\u200b", "") for text in page.locator(".opblock-summary-path").all_inner_texts()]


def check_docs(visit, name_prefix: str = "") -> None:
    page = visit.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Email service API")
    paths = operation_paths(page)
    assert any(path.startswith("/api/accounts") for path in paths), paths
    assert any(path.startswith("/api/messages") for path in paths), paths
    visit.shot(f"{name_prefix}swagger-ui", full_page=False)
    visit.check()

    page = visit.goto("/api/redoc/")
    expect(page.locator("h1")).to_contain_text("Email service API")
    operations = page.locator("[data-item-id*='/operation/']")
    expect(operations.first).to_be_attached()
    assert operations.count() > 10
    expect(page.locator("body")).to_contain_text(re.compile(r"/api/accounts/?\{id\}"))
    visit.shot(f"{name_prefix}redoc", full_page=False)
    visit.check()


def test_operator_admin(dev_server, site, visit):
    visit = visit(dev_server)
    log_in(visit, "/admin/login/?next=/admin/", "operator")
    page = visit.page
    expect(page.locator("#site-name")).to_contain_text("Django administration")
    expect(page.locator("#content")).to_contain_text("Site administration")
    # The admin's own stylesheet applied: its header bar is not the browser's default.
    assert page.locator("#header").evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    visit.shot("index")

    lists = {
        "tenants": ("/admin/core/tenant/", ["acme", "globex"]),
        "memberships": ("/admin/core/tenantmembership/", ["rita", "gus"]),
        "accounts": ("/admin/accounts/emailaccount/", ["rita@acme.example", "gus@globex.example"]),
        "audit-log": ("/admin/core/auditlog/", ["account.create", "account.update"]),
        "drafts": ("/admin/compose/draft/", ["Proposal for Acme", "Globex merger memo"]),
    }
    for label, (path, texts) in lists.items():
        page = visit.goto(path)
        for text in texts:  # the operator sees every tenant
            expect(page.locator("#result_list")).to_contain_text(text)
        visit.shot(label)
    visit.check()


def test_browsable_api(dev_server, site, visit):
    visit = visit(dev_server)
    accounts = "/api/v1/acme/email_client/accounts/"
    log_in(visit, f"/api-auth/login/?next={accounts}", "rita")
    page = visit.page
    assert page.url == visit.origin + accounts
    expect(page.locator(".page-header h1")).to_contain_text("Account")
    expect(page.locator(".response-info")).to_contain_text("rita@acme.example")
    expect(page.locator(".response-info")).not_to_contain_text("gus@globex.example")
    expect(page.locator(".navbar")).to_contain_text("rita")  # logged in, by session
    visit.shot("accounts")

    page = visit.goto("/api/v1/acme/email_client/messages/")
    expect(page.locator(".response-info")).to_contain_text("Quarterly figures for Acme")
    expect(page.locator(".response-info")).not_to_contain_text("Globex board minutes")
    visit.shot("messages")

    page = visit.goto("/api/v1/acme/email_client/compose/")
    expect(page.locator(".response-info")).to_contain_text("Proposal for Acme")
    expect(page.locator(".response-info")).not_to_contain_text("Globex merger memo")
    visit.shot("compose")
    visit.check()

    # A path without the tenant (a browser sends no X-Tenant-ID): a 400 page
    # that says how to name one (it was a 500: the renderer's form check).
    response = page.goto(visit.origin + "/api/accounts/")
    assert response.status == 400
    expect(page.locator(".response-info")).to_contain_text("/api/v1/{tenant}/email_client/")
    visit.shot("tenant-required")


def test_api_docs(dev_server, site, visit):
    check_docs(visit(dev_server))


def test_production_settings_serve_collected_static_files(production_server, site, visit):
    """Production settings after `collectstatic`: the admin and the docs load
    their files from STATIC_ROOT under the manifest's hashed names."""
    visit = visit(production_server, tls=True)
    log_in(visit, "/admin/login/?next=/admin/accounts/emailaccount/", "operator")
    page = visit.page
    expect(page.locator("#result_list")).to_contain_text("rita@acme.example")
    hrefs = page.locator("link[rel=stylesheet]").evaluate_all("links => links.map(l => l.href)")
    assert any(re.search(r"/static/admin/css/base\.[0-9a-f]{12}\.css$", href) for href in hrefs), hrefs
    visit.shot("admin-accounts")
    visit.check()

    check_docs(visit, "production-")
    srcs = visit.page.locator("script[src]").evaluate_all("scripts => scripts.map(s => s.src)")
    assert srcs and all(
        re.search(r"/static/drf_spectacular_sidecar/.+\.[0-9a-f]{12}\.js$", s) for s in srcs
    ), srcs
