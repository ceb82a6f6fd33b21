"""A retrieval engine opened once and queried many times.

A :class:`Searcher` holds everything a query needs: the extractor (rebuilt from the recorded
spec), the local index, the feature shards (for verification), the global matrix and the
removed images. It reads the manifest once, when opened: a writer that commits later changes
nothing under it (open a new one to see the change), and the files it opened stay readable.

``query(photo)`` describes a photo and ranks the collection; ``query_features`` takes features
already extracted. Both return a :class:`QueryResult` of names, scores and inlier counts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from delfx.engine import manifest as mf
from delfx.engine.extractor import Described, Extractor, Photo
from delfx.engine.spec import DEFAULT_VERIFY, EngineSpec, from_dict
from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.index import kernels, local
from delfx.index.fusion import fuse_rankings
from delfx.index.global_ann import GlobalIndex
from delfx.index.storage import IndexDir
from delfx.io.featureset import FeatureSet
from delfx.rerank import RerankConfig, rerank_all, rerank_one, scores_of

#: Images the global ranking of a query holds at least where the collection is searched
#: approximately (from ``GlobalIndexConfig.exact_below`` images on).
GLOBAL_SHORTLIST = 1000

logger = logging.getLogger(__name__)

#: Times :meth:`Searcher.open` tries when writers keep committing while it reads.
OPEN_ATTEMPTS = 5


@dataclass(frozen=True)
class Hit:
    """One result.

    Attributes:
        name: the image's name in the collection.
        score: its first-stage score (index similarity, fused score or global cosine).
        inliers: verified inliers, or None where the image was not verified.
    """

    name: str
    score: float
    inliers: int | None = None


@dataclass
class QueryResult:
    """The ranked results of one query and where the time went (milliseconds)."""

    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)

    def names(self) -> list[str]:
        """The names, best first."""
        return [h.name for h in self.hits]


class Searcher:
    """An open engine (see the module docstring); use as a context manager.

    Args:
        spec: what the engine is.
        index: the local index (None for a global-verify spec without one).
        names: the name of each image id.
        features: the local features of every image (for verification).
        global_matrix: ``N x D`` global descriptors, row = id (None for a local-only spec).
        removed: ids of removed images (never returned).
        device: torch device of the global network.
    """

    def __init__(
        self,
        spec: EngineSpec,
        index: local.LocalIndex | None,
        names: Sequence[str],
        features: FeatureSet,
        global_matrix: np.ndarray | None = None,
        removed: Sequence[int] = (),
        device: str = "cpu",
        info: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.index = index
        self.names = list(names)
        self.features = features
        self.global_matrix = global_matrix
        self._global: GlobalIndex | None = None  # built on first use (global_index)
        self._global_lock = threading.Lock()
        self.live = np.ones(len(self.names), dtype=bool)
        self.live[np.asarray(list(removed), dtype=np.int64)] = False
        self._live_ids = mf.live_ids(self.names, removed)
        self.extractor = Extractor(spec, device) if spec.sift_preset is not None else None
        self.info = info or {}

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, device: str = "cpu") -> Searcher:
        """Open a collection folder (``delfx index create``).

        A writer may commit while this reads: files of the manifest read first can be deleted
        before they are opened. Then the new commit is opened instead (up to
        :data:`OPEN_ATTEMPTS` times); a reader never mixes two commits.

        Raises:
            InputError: no collection there, or a damaged manifest or file (named).
        """
        folder = Path(folder)
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            stamp = mf.stamp(folder)
            try:
                return cls._open_once(folder, device)
            except (InputError, OSError) as exc:
                if attempt == OPEN_ATTEMPTS or stamp is None or mf.stamp(folder) == stamp:
                    raise
                logger.info("%s: a writer committed while opening (%s); reopening", folder, exc)
        raise AssertionError("unreachable")

    @classmethod
    def _open_once(cls, folder: Path, device: str) -> Searcher:
        from delfx.engine.vectors import read_matrix

        t0 = time.perf_counter()
        manifest = mf.read(folder)
        spec = from_dict(manifest["spec"], str(folder / mf.MANIFEST))
        store = IndexDir(folder / mf.INDEX)
        idx = manifest["index"]
        segments, names = store.read_segments(idx)
        model = store.read_model(idx["model"])
        index = local.restore(idx["meta"], model, segments, len(names), store.read_stats(idx))
        kernels.warm()  # compile (or load) the scan kernels now, not in the first query
        matrix = None
        if spec.uses_global:
            matrix = read_matrix(folder, manifest["shards"], len(names))
            _check_model(folder, spec, manifest.get("global_model"))
        features = FeatureSet([folder / s["features"] for s in manifest["shards"]])
        info = {**manifest, "folder": str(folder), "open_s": time.perf_counter() - t0}
        return cls(spec, index, names, features, matrix, manifest["removed"], device, info)

    @classmethod
    def from_index(
        cls,
        index_dir: str | os.PathLike[str] | None,
        features: Sequence[str | os.PathLike[str]],
        *,
        spec: EngineSpec | None = None,
        names: Sequence[str] | None = None,
    ) -> Searcher:
        """Open a bare index folder (``delfx index build``) over feature files that hold its
        images (and the queries), for ``delfx search``, ``delfx rerank`` and ``delfx run``.

        Args:
            index_dir: the index folder, or None for a spec that ranks by a global
                descriptor only (then ``names`` gives the image of each id).
            features: the feature files (shards, oldest first).
            spec: what the engine is (default: the named spec of the index's kind).
            names: the image of each id when there is no index.
        """
        from delfx.build_index import load
        from delfx.engine.spec import named

        index = None
        if index_dir is not None:
            index, names, manifest = load(index_dir)
            if spec is None:
                spec = named(f"sift-{manifest.get('kind', 'asmk')}")
        if spec is None or names is None:
            raise InputError("searcher: an index folder, or a spec and image names, is needed")
        return cls(spec, index, names, FeatureSet([Path(f) for f in features]))

    def rank_stored(
        self, query_names: Sequence[str], *, top_k: int | None = None, progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank the index for queries whose features are in the feature set.

        Returns:
            ``(ranks, scores)``: ``Q x K`` image ids, best first, and their scores.
        """
        from delfx.search import rank_queries

        if self.index is None:
            raise InputError(f"pipeline '{self.spec.name}': no local index to rank with")
        return rank_queries(self.index, self.features, query_names, top_k=top_k, progress=progress)

    def verify_stored(
        self,
        conf: RerankConfig,
        ranks: np.ndarray,
        scores: np.ndarray,
        query_names: Sequence[str],
        *,
        junk: Sequence[np.ndarray] | None = None,
        progress: bool = True,
        source: str = "ranks",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Verify the head of each ranked list (:func:`delfx.rerank.rerank_all`) with the
        stored features of the queries and the images: ``(new ranks, inliers)``."""
        return rerank_all(
            conf,
            ranks,
            scores,
            self.features,
            query_names,
            self.names,
            junk=junk,
            words_fn=None if self.index is None else self.index.words,
            progress=progress,
            source=source,
        )

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the feature shards."""
        self.features.close()

    def __len__(self) -> int:
        """The number of images a query can return."""
        return int(self.live.sum())

    def ids_of(self, names: Sequence[str]) -> list[int]:
        """The live id of each name (the newest image of a replaced name)."""
        missing = [n for n in names if n not in self._live_ids]
        if missing:
            raise InputError(f"no image named '{missing[0]}' in the collection")
        return [self._live_ids[n] for n in names]

    # -- ranking ------------------------------------------------------------------------------

    def global_index(self) -> GlobalIndex:
        """The search structure over :attr:`global_matrix`, built on first use: exact below
        ``GlobalIndexConfig.exact_below`` images (the brute-force ranking), an inverted file
        from there on (:mod:`delfx.index.global_ann`)."""
        assert self.global_matrix is not None
        with self._global_lock:
            if self._global is None:
                self._global = GlobalIndex.build(self.global_matrix)
            return self._global

    def rank(self, described: Described, want: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first-stage ranking of the live images: ``(ids, scores)``, best first; the best
        ``want`` of them at least (every one when None), so a large index is not sorted.

        The global ranking of a collection searched approximately (:meth:`global_index`) holds
        the best ``max(want, GLOBAL_SHORTLIST)`` images; fusion scores the others 0 for it.
        With ``want`` None it is exact.
        """
        n = len(self.names)
        ids = scores = None
        k = n
        if want is not None and not self.spec.uses_global:  # a fused ranking needs all
            k = min(n, int(want) + n - len(self))  # removed images may take places
        if self.spec.uses_index:
            assert self.index is not None
            desc = described.local.descriptors
            if desc.shape[1] != local.dim_of(self.index):
                raise InputError(
                    f"query: {desc.shape[1]}-d descriptors; the index expects "
                    f"{local.dim_of(self.index)}-d"
                )
            ids, scores = self.index.search(desc, k)
        if self.spec.uses_global:
            if self.global_matrix is None or described.global_vec is None:
                raise InputError(f"pipeline '{self.spec.name}': no global descriptor to rank by")
            g_index = self.global_index()
            g_k = n
            if not g_index.exact and want is not None:
                g_k = min(n, max(GLOBAL_SHORTLIST, int(want)) + n - len(self))
            vec = described.global_vec.astype(np.float32)[None]
            found, sims = g_index.search(vec, g_k, exact=want is None)
            g_ids = found[0][found[0] >= 0]  # an inverted file may find fewer than g_k
            g_scores = sims[0][: g_ids.size].astype(np.float64)
            if ids is None:
                ids, scores = g_ids, g_scores
            else:
                fused = fuse_rankings(
                    ids[None], np.asarray(scores)[None], g_ids[None], g_scores[None], n,
                    self.spec.pipeline.fusion_weight,
                )  # fmt: skip
                ids, scores = fused[0][0], fused[1][0]
        assert ids is not None and scores is not None
        keep = self.live[ids]
        return np.asarray(ids)[keep], np.asarray(scores, dtype=np.float64)[keep]

    def verifier(self, verify: int) -> RerankConfig:
        """The verification settings of the spec, for ``verify`` candidates."""
        return replace(self.spec.pipeline.rerank, rerank_num=int(verify))

    def _db(self) -> Callable[[int], LocalFeatures]:
        return lambda i: self.features.get(self.names[i])

    def query_features(
        self, described: Described, *, top: int | None = 10, verify: int | None = None
    ) -> QueryResult:
        """Rank the collection for features already extracted.

        Args:
            described: the query's local features (and global descriptor for a hybrid spec).
            top: results to return (None: every image).
            verify: candidates to verify (None: the spec's own, else :data:`DEFAULT_VERIFY`
                for a spec that verifies none; 0: none).

        Raises:
            InputError: a query without features, or an empty collection.
        """
        if len(self) == 0:
            raise InputError(f"{self.info.get('folder', 'collection')}: holds no images")
        if len(described.local) == 0 and self.spec.uses_index:
            raise InputError("no local features found in the query")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        n_verify = self._verify_count(verify)
        ids, scores = self.rank(described, None if top is None else max(int(top), n_verify))
        timings["search_ms"] = 1000 * (time.perf_counter() - t)
        inliers: dict[int, int] = {}
        if n_verify > 0 and len(described.local) > 0:
            t = time.perf_counter()
            conf = self.verifier(n_verify)
            words = None if self.index is None or conf.matches == "ratio" else self.index.words
            new_ids, inl = rerank_one(
                conf, ids, scores, described.local, self._db(), words_fn=words
            )
            head = new_ids[: inl.size]
            inliers = {int(i): int(c) for i, c in zip(head, inl, strict=True)}
            ids, scores = new_ids, scores_of(ids, scores, new_ids)
            timings["verify_ms"] = 1000 * (time.perf_counter() - t)
        k = len(ids) if top is None else min(int(top), len(ids))
        hits = [
            Hit(self.names[int(i)], float(s), inliers.get(int(i)))
            for i, s in zip(ids[:k], scores[:k], strict=True)
        ]
        return QueryResult(hits, timings)

    def _verify_count(self, verify: int | None) -> int:
        if verify is not None:
            if verify < 0:
                raise InputError(f"verify must be at least 0, got {verify}")
            return int(verify)
        return self.spec.verify or DEFAULT_VERIFY

    def query(
        self,
        photo: Photo,
        *,
        top: int | None = 10,
        verify: int | None = None,
        box: Sequence[float] | None = None,
        label: str | None = None,
    ) -> QueryResult:
        """Describe a photo (path, bytes or ``H x W x 3`` array; optionally only its box
        ``(x0, y0, x1, y1)``) and rank the collection (see :meth:`query_features`)."""
        if self.extractor is None:
            raise InputError(f"pipeline '{self.spec.name}': no extractor for photos")
        name = label or (str(photo) if isinstance(photo, (str, os.PathLike)) else "photo")
        t = time.perf_counter()
        described = self.extractor.describe(photo, box, label=name)
        extract_ms = 1000 * (time.perf_counter() - t)
        try:
            result = self.query_features(described, top=top, verify=verify)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        result.timings = {"extract_ms": extract_ms, **result.timings}
        result.timings["total_ms"] = sum(result.timings.values())
        return result


def _check_model(folder: Path, spec: EngineSpec, recorded: Any) -> None:
    """Refuse a global checkpoint whose content changed since the collection was built: its
    descriptors would not be comparable with the stored ones."""
    from delfx.io.cache_key import model_id

    assert spec.global_opts is not None
    model = spec.global_opts.model
    if recorded is not None and Path(model).is_file() and model_id(model) != recorded:
        raise InputError(
            f"{folder / mf.MANIFEST}: the global model {model} changed since the collection "
            f"was built (recorded {recorded}); rebuild it with 'delfx index create --overwrite'"
        )
