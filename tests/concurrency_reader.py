"""The reader process of ``tests/test_readers_writers.py``.

It holds a collection as the search service does (:class:`delfx.serve.library.Library`:
opened once, reopened after each commit) and searches it in a loop with stored query
features, until it has done ``--searches`` searches and the writer has left ``--stop``. For
each search it records a digest of the live names of the commit it searched and whether every
hit is among them; errors are recorded, not raised. Output: one JSON file.

    python -m tests.concurrency_reader DIR QUERIES.h5 OUT.json --searches 1000 --stop FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path


def live_digest(names: list[str]) -> str:
    """A digest of a set of image names (the writer computes the same of each commit)."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("queries", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--searches", type=int, default=1000)
    p.add_argument("--stop", type=Path, required=True)
    args = p.parse_args()

    from delfx.engine.extractor import Described
    from delfx.io.featurestore import FeatureReader
    from delfx.serve.library import Library

    with FeatureReader(args.queries) as r:
        queries = [r.get(n) for n in r.names()]
    lib = Library(args.folder)
    records, errors, reopen = [], [], 0
    last = None
    t0 = time.perf_counter()
    i = 0
    while i < args.searches or not args.stop.exists():
        try:
            s = lib.searcher()
            if s is not last:
                reopen, last = reopen + 1, s
            live = [n for n, ok in zip(s.names, s.live, strict=True) if ok]
            hits = s.query_features(Described(queries[i % len(queries)], None), top=5, verify=0)
            names = [h.name for h in hits.hits]
            records.append({"live": live_digest(live), "ok": set(names) <= set(live)})
        except Exception as exc:  # noqa: BLE001 (the test reports every error)
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1
    out = {
        "searches": i,
        "records": records,
        "errors": errors,
        "reopened": reopen,
        "seconds": time.perf_counter() - t0,
    }
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
