"""A real Celery worker for a test, in a process group of its own, with the
test's settings overrides; killed with SIGKILL (as the kernel's OOM killer
or a lost machine would)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from django.conf import settings

SCRIPT = """
import json, os, sys
sys.path.insert(0, os.environ["APP_DIR"])
os.environ["DJANGO_SETTINGS_MODULE"] = "emailclient.settings.test"
import django
django.setup()
from django.conf import settings
for name, value in json.loads(os.environ["SETTINGS_OVERRIDES"]).items():
    setattr(settings, name, value)
from emailclient.celery import app
if os.environ.get("REDELIVER_AFTER"):  # an unacknowledged task comes back soon
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["REDELIVER_AFTER"]),
        "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
    }
app.worker_main([
    "worker", "--pool=prefork", "--concurrency=" + os.environ["CONCURRENCY"], "--loglevel=INFO",
    "--without-heartbeat", "--without-gossip", "--without-mingle",
    "--hostname", os.environ["WORKER_NAME"] + "@%h",
])
"""


class CeleryWorker:
    def __init__(
        self, tmp_path, name: str, overrides: dict, *, concurrency: int = 1, redeliver_after: float | None = 3
    ):
        script = tmp_path / "worker.py"
        script.write_text(SCRIPT)
        self.log = tmp_path / f"{name}.log"
        env = {
            **os.environ,
            "APP_DIR": str(settings.BASE_DIR),
            "SETTINGS_OVERRIDES": json.dumps(overrides),
            "WORKER_NAME": name,
            "CONCURRENCY": str(concurrency),
            "REDELIVER_AFTER": "" if redeliver_after is None else str(redeliver_after),
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"ready." not in self.log.read_bytes():
            assert time.monotonic() < deadline and self.process.poll() is None, self.output()
            time.sleep(0.1)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]
