"""One sync of one account, in its own process, for bench/sync_bench.py.

Run by the benchmark as a child process so that its peak memory is the
worker's alone. Prints one JSON line on stdout: the SyncReport, the time
`account_sync()` took, and the process's own peak RSS.

    TEST_DATABASE_NAME=emailclient_bench DJANGO_SETTINGS_MODULE=emailclient.settings.test \
    .venv/bin/python bench/sync_worker.py --tenant T --account A --blobs DIR --ca-file CA [--profile OUT]
"""

import argparse
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", type=uuid.UUID, required=True)
    parser.add_argument("--account", type=uuid.UUID, required=True)
    parser.add_argument("--blobs", type=Path, required=True, help="BLOB_STORAGE_DIR")
    parser.add_argument("--ca-file", required=True, help="MAIL_TLS_CA_FILE")
    parser.add_argument("--profile", type=Path, help="run account_sync under cProfile, dump stats here")
    args = parser.parse_args(argv)

    if os.environ.get("TEST_DATABASE_NAME") != "emailclient_bench":
        parser.error("TEST_DATABASE_NAME must be emailclient_bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emailclient.settings.test")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.conf import settings

    if settings.DATABASES["default"]["NAME"] != "emailclient_bench":
        raise SystemExit(f"refusing to run against {settings.DATABASES['default']['NAME']}")
    settings.BLOB_STORAGE_DIR = args.blobs
    settings.MAIL_TLS_CA_FILE = args.ca_file

    from mailboxes.sync import account_sync

    started_rss = _vm_hwm_kb()
    t0 = time.perf_counter()
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        report = profiler.runcall(account_sync, tenant_id=args.tenant, account_id=args.account)
        profiler.dump_stats(str(args.profile))
    else:
        report = account_sync(tenant_id=args.tenant, account_id=args.account)
    seconds = time.perf_counter() - t0

    result = {
        "seconds": seconds,
        "folders": report.folders,
        "new": report.new,
        "updated": report.updated,
        "expunged": report.expunged,
        "quarantined": report.quarantined,
        "bodies_fetched": report.bodies_fetched,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vm_hwm_kb": _vm_hwm_kb(),
        "vm_hwm_before_sync_kb": started_rss,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
