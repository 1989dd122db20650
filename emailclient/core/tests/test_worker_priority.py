"""A real Celery worker lowers its CPU priority (CELERY_WORKER_NICE) before
its pool forks: the main process and every child run at that nice value."""

import os
from pathlib import Path

import pytest

from emailclient.core.tests.celery_worker import CeleryWorker


def nice_of(pid: int) -> int:
    # /proc/<pid>/stat: the 19th field is the nice value (after "(comm)").
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("nice", [7, 0])
def test_the_worker_and_its_children_run_at_the_configured_nice(tmp_path, nice):
    worker = CeleryWorker(tmp_path, f"nice{nice}", {"CELERY_WORKER_NICE": nice}, concurrency=2)
    try:
        worker.wait_ready()
        main = worker.process.pid  # the script runs the worker in its own process
        children = children_of(main)
        assert len(children) == 2, worker.output()
        expected = max(nice, os.getpriority(os.PRIO_PROCESS, 0))  # never raised above the test's own
        assert [nice_of(pid) for pid in [main, *children]] == [expected] * 3
    finally:
        worker.kill()
