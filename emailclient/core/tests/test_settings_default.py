"""`manage.py` and the Celery app without DJANGO_SETTINGS_MODULE: the
production settings (no DEBUG, no private mail hosts, no plaintext), which
refuse to start without their secrets, never the development settings."""

import os
import subprocess
import sys

from django.conf import settings

PROBE = (
    "from django.conf import settings; "
    "print(settings.SETTINGS_MODULE, settings.DEBUG, settings.MAIL_ALLOW_PRIVATE_HOSTS, "
    "settings.MAIL_ALLOW_PLAINTEXT)"
)
SECRETS = {
    "DJANGO_SECRET_KEY": "s" * 50,
    "JWT_SIGNING_KEY": "j" * 64,
    "ALLOWED_HOSTS": "mail.example.com",
}


def _environment(**extra: str) -> dict[str, str]:
    # No settings module, and nothing of the test settings' own choosing.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DJANGO_SETTINGS_MODULE", "DEBUG", "MAIL_ALLOW_PRIVATE_HOSTS", "MAIL_ALLOW_PLAINTEXT")
        and name not in SECRETS
    }
    env["CREDENTIAL_ENCRYPTION_KEYS"] = os.environ["CREDENTIAL_ENCRYPTION_KEYS"]
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )


def test_manage_py_without_a_settings_module_runs_production():
    done = _run(["manage.py", "shell", "-v", "0", "-c", PROBE], _environment(**SECRETS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["emailclient.settings.production", "False", "False", "False"]


def test_manage_py_without_a_settings_module_or_secrets_refuses_to_start():
    done = _run(["manage.py", "shell", "-v", "0", "-c", PROBE], _environment())
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY" in done.stderr
    assert "emailclient.settings" not in done.stdout


def test_celery_app_without_a_settings_module_runs_production():
    probe = f"import emailclient.celery; {PROBE}"
    done = _run(["-c", probe], _environment(**SECRETS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["emailclient.settings.production", "False", "False", "False"]
