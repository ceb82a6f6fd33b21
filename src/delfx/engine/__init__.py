"""One engine under every pipeline: a spec, a manifest, a writer and a :class:`Searcher`.

The Python face of collections (``delfx index create|add|remove|compact|info`` and
``delfx query``)::

    from delfx import engine

    engine.create(engine.named("sift-asmk"), "my-index", "photos/")
    with engine.Searcher.open("my-index") as s:
        for hit in s.query("query.jpg", top=5).hits:
            print(hit.name, hit.score, hit.inliers)
    engine.add("my-index", ["more/"])
    engine.remove("my-index", ["photos-name.jpg"])
    engine.compact("my-index")
"""

from __future__ import annotations

from delfx.engine.build import add, compact, create, remove
from delfx.engine.searcher import Hit, QueryResult, Searcher
from delfx.engine.spec import DEFAULT_COLLECTION, EngineSpec, named

__all__ = [
    "DEFAULT_COLLECTION",
    "EngineSpec",
    "Hit",
    "QueryResult",
    "Searcher",
    "add",
    "compact",
    "create",
    "named",
    "remove",
]
