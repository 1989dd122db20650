#!/usr/bin/python3
"""Time notmuch searches through its Python bindings (notmuch2, Debian's
python3-notmuch2, so this runs under the system Python, not the venv).

    /usr/bin/python3 bench/read_notmuch.py --db PATH --queries queries.json --repeats 5 --limit 50

`queries.json` is a list of {"name", "notmuch"}. For each query: one warm-up,
then `repeats` timed runs of what a list page costs: open the query sorted
newest first, read the first `limit` messages' id, date, subject and sender
(the list fields notmuch keeps in its database) and stop. The database is
opened once, read-only, as a server process would keep it; no process start
is timed. Prints one JSON object: per query the timings (ms) and the match
count (counted once, untimed).
"""

import argparse
import json
import sys
import time

import notmuch2


def page(db, query: str, limit: int) -> list:
    rows = []
    for message in db.messages(query, sort=notmuch2.Database.SORT.NEWEST_FIRST, exclude_tags=()):
        rows.append((message.messageid, message.date, message.header("subject"), message.header("from")))
        if len(rows) >= limit:
            break
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    with open(args.queries) as f:
        queries = json.load(f)
    out = {"version": notmuch2.__name__, "queries": []}
    with notmuch2.Database(
        args.db, mode=notmuch2.Database.MODE.READ_ONLY, config=notmuch2.Database.CONFIG.EMPTY
    ) as db:
        out["messages"] = db.count_messages("*", exclude_tags=())
        for query in queries:
            page(db, query["notmuch"], args.limit)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                rows = page(db, query["notmuch"], args.limit)
                times.append((time.perf_counter() - t0) * 1000)
            count = db.count_messages(query["notmuch"], exclude_tags=())
            out["queries"].append({**query, "ms": times, "returned": len(rows), "matches": count})
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
