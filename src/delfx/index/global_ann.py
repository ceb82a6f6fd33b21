"""Nearest-neighbour search over many global descriptors: exact when small, IVF when large.

Vectors are row-major ``float32``, ``N x D``, L2-normalised; the similarity is the inner
product. Below ``exact_below`` vectors a :class:`GlobalIndex` ranks by brute force
(:func:`delfx.index.global_search.rank_ip`). From there on it is an inverted file (IVF-PQ):

* ``nlist`` unit centroids from spherical k-means (numpy, seeded) on ``nlist * train_per_list``
  sampled vectors; each vector is filed under its centroid of largest inner product;
* in the lists, a product quantizer of the residual to the centroid: a 4-bit code for every
  ``pq_dims`` dimensions (``D / (2 pq_dims)`` bytes a vector), scanned by faiss's SIMD
  fast-scan kernels;
* a query visits its ``nprobe`` nearest lists, takes the ``rescore * k`` best candidates by
  code and re-scores them with the float vectors: the similarities returned are exact and so
  is the order among candidates (ties: lower id). Recall is lost only where a true neighbour
  is in no visited list or not among the candidates.

The float vectors (``4 D`` bytes a vector) are shared with the caller's array where it is
already ``float32`` and C-contiguous: do not modify it afterwards. A build is deterministic for
a seed on one machine and thread count. Saved indexes are ``.npz`` files holding faiss's own
serialisation as a ``uint8`` array (nothing pickled).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from delfx.errors import InputError
from delfx.index.global_search import rank_ip
from delfx.index.storage import load_arrays, save_arrays

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KINDS = ("ivf-pq",)
_CHUNK = 8192  # rows per matrix product when assigning vectors to lists
_PQ_TRAIN = 16384  # residuals the product quantizer is trained on, at most
_PQ_BITS = 4  # bits per sub-quantizer code: what faiss's fast-scan kernels take


@dataclass(frozen=True)
class GlobalIndexConfig:
    """How a :class:`GlobalIndex` is built and searched.

    Attributes:
        exact_below: collections smaller than this are ranked exactly (brute force).
        kind: the approximate index from ``exact_below`` on, one of :data:`KINDS`.
        nlist: inverted lists (0: the power of two nearest ``4 sqrt(N)``, at most ``N / 8``).
        nprobe: lists visited per query (search time; see :meth:`GlobalIndex.tune`).
        rescore: candidates per result re-scored with the float vectors (search time).
        pq_dims: dimensions per product-quantizer code (``"ivf-pq"``; must divide ``D``).
        train_per_list: k-means training vectors per list (a seeded sample).
        niter: k-means iterations.
        seed: seed of the training samples and the k-means initialisation.
    """

    exact_below: int = 20_000
    kind: str = "ivf-pq"
    nlist: int = 0
    nprobe: int = 256
    rescore: int = 4
    pq_dims: int = 2
    train_per_list: int = 32
    niter: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"GlobalIndexConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for f in (f for f in fields(self) if f.name != "kind"):
            value = getattr(self, f.name)
            low = 0 if f.name in ("exact_below", "nlist", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(
                    f"GlobalIndexConfig.{f.name} must be an integer >= {low}, got {value!r}"
                )

    def lists_for(self, n: int) -> int:
        """The number of inverted lists for ``n`` vectors."""
        if self.nlist:
            return self.nlist
        auto = 2 ** int(round(np.log2(max(4.0 * np.sqrt(n), 1.0))))
        return int(max(1, min(auto, n // 8)))


#: Named settings. On 1M synthetic 512-d descriptors (2-core machine, one query at a time;
#: ``benchmarks/global_scale.py``) recall@100 / p50 latency: fast 0.94 / 1.7 ms, balanced
#: 0.97 / 2.4 ms, accurate 0.99 / 4.3 ms, against 400 ms for exact.
PRESETS: dict[str, GlobalIndexConfig] = {
    "exact": GlobalIndexConfig(exact_below=2**62),
    "fast": GlobalIndexConfig(nprobe=128),
    "balanced": GlobalIndexConfig(),
    "accurate": GlobalIndexConfig(nprobe=512, rescore=8),
}


def preset(name: str, **overrides: Any) -> GlobalIndexConfig:
    """A named configuration of :data:`PRESETS`, optionally with fields replaced."""
    if name not in PRESETS:
        raise InputError(f"global index preset must be one of {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def _matrix(x: Any, field: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 matrix (no copy where it already is one), checked."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InputError(f"{field} must be a 2-d array (rows x dimensions), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{field} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{field} is empty (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{field} has {arr.shape[1]} dimensions; the index holds {dim}-d vectors")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for s in range(0, arr.shape[0], 65536):
        if not np.isfinite(arr[s : s + 65536]).all():
            raise InputError(f"{field} holds NaN or infinite values")
    return arr


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (largest inner product) of each row: ``(N,)`` int64 and ``(N,)`` sims."""
    lab = np.empty(x.shape[0], dtype=np.int64)
    sim = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], _CHUNK):
        prod = x[s : s + _CHUNK] @ centroids.T
        lab[s : s + _CHUNK] = np.argmax(prod, axis=1)
        sim[s : s + _CHUNK] = np.take_along_axis(prod, lab[s : s + _CHUNK, None], axis=1)[:, 0]
    return lab, sim


def spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """``k x D`` float32 unit centroids of ``N x D`` float32 ``x`` (``N >= k``) by spherical
    k-means: assignment by inner product, centroids renormalised; initialised at ``k`` distinct
    rows drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    cent = x[np.sort(rng.choice(x.shape[0], k, replace=False))].copy()
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    for _ in range(niter):
        lab, sim = _nearest(x, cent)
        order = np.argsort(lab, kind="stable")
        counts = np.bincount(lab, minlength=k)
        used = np.flatnonzero(counts)
        sums = np.zeros_like(cent)
        sums[used] = np.add.reduceat(x[order], np.cumsum(counts)[used] - counts[used], axis=0)
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # restart empty clusters at the worst-served vectors
            sums[empty] = x[np.argsort(sim, kind="stable")[: empty.size]]
        cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return cent.astype(np.float32)


def _pq_codebooks(resid: np.ndarray, m: int, conf: GlobalIndexConfig) -> np.ndarray:
    """``m x 2^bits x D/m`` float32 product-quantizer codebooks (faiss's layout): L2 k-means
    (``conf.niter``, ``conf.seed``) of each of the ``m`` sub-vectors of ``N x D`` residuals."""
    n, ksub = resid.shape[0], 2**_PQ_BITS
    sub = resid.reshape(n, m, -1).transpose(1, 0, 2)  # m x N x dsub
    rows = np.sort(np.random.default_rng(conf.seed).choice(n, min(n, ksub), replace=False))
    books = np.zeros((m, ksub, sub.shape[2]), np.float32)
    books[:, : rows.size] = sub[:, rows]
    for s in range(0, m, 32):  # 32 sub-quantizers at a time bounds the m x N x ksub scores
        x, c = np.ascontiguousarray(sub[s : s + 32]), books[s : s + 32]
        offset = (np.arange(x.shape[0]) * ksub)[:, None]
        cells = x.shape[0] * ksub
        for _ in range(conf.niter):
            d2 = sum((x[..., j, None] - c[:, None, :, j]) ** 2 for j in range(x.shape[2]))
            lab = (d2.argmin(-1) + offset).ravel()  # cells numbered across sub-quantizers
            counts = np.bincount(lab, minlength=cells).reshape(-1, ksub, 1)
            sums = np.stack(
                [np.bincount(lab, x[..., j].ravel(), cells) for j in range(x.shape[2])], -1
            ).reshape(c.shape)
            c = np.where(counts > 0, sums / np.maximum(counts, 1), c).astype(np.float32)
        books[s : s + 32] = c
    return books


def _train_ivf(t: np.ndarray, conf: GlobalIndexConfig, n: int) -> faiss.IndexIVFPQ:
    """An empty, trained inverted file for ``n`` vectors, from the training vectors ``t``."""
    nlist, dim = conf.lists_for(n), t.shape[1]
    if t.shape[0] < nlist:
        raise InputError(f"train: {t.shape[0]} vectors for {nlist} lists (GlobalIndexConfig.nlist)")
    if dim % conf.pq_dims:
        raise InputError(
            f"vectors: dimension {dim} is not a multiple of GlobalIndexConfig.pq_dims "
            f"({conf.pq_dims})"
        )
    rng = np.random.default_rng(conf.seed)
    size = min(t.shape[0], nlist * conf.train_per_list)
    sample = t[np.sort(rng.choice(t.shape[0], size, replace=False))]
    cent = spherical_kmeans(sample, nlist, conf.niter, conf.seed)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(cent)
    m = dim // conf.pq_dims
    ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, _PQ_BITS, faiss.METRIC_INNER_PRODUCT)
    sub = sample[np.sort(rng.choice(size, min(size, _PQ_TRAIN), replace=False))]
    books = _pq_codebooks(sub - cent[_nearest(sub, cent)[0]], m, conf)
    faiss.copy_array_to_vector(books.ravel(), ivf.pq.centroids)
    ivf.is_trained = True  # by residual: codes of x - centroid, scored as q.c + q.(x - c)
    logger.info("global index: %s, %d lists trained on %d vectors", conf.kind, nlist, size)
    return ivf


class GlobalIndex:
    """Inner-product search over global descriptors (see the module docstring).

    Build with :meth:`build`; ids are row numbers, continued by :meth:`add`.

    Args:
        vectors: ``N x D`` float32 database.
        conf: the configuration.
        ivf: the trained inverted file holding the ``N`` vectors (None for the exact path).
    """

    def __init__(
        self, vectors: np.ndarray, conf: GlobalIndexConfig, ivf: faiss.IndexIVFPQ | None = None
    ) -> None:
        self.vectors = vectors
        self.conf = conf
        self.ivf = ivf  # what is saved and added to
        self._scan: faiss.IndexIVFPQFastScan | None = None  # what is searched
        if ivf is not None:
            self._refresh()

    def _refresh(self) -> None:
        """Derive the searched index (the codes in fast-scan layout) from :attr:`ivf`."""
        assert self.ivf is not None
        self._scan = faiss.IndexIVFPQFastScan(self.ivf)
        self._scan.nprobe = min(self.conf.nprobe, self.ivf.nlist)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        conf: GlobalIndexConfig | None = None,
        *,
        train: np.ndarray | None = None,
    ) -> GlobalIndex:
        """Index ``N x D`` finite vectors (float32; other numbers are converted) as ids ``0..N-1``.

        Args:
            vectors: the database.
            conf: the configuration (default :class:`GlobalIndexConfig`).
            train: ``M x D`` vectors to sample the inverted file's training set from (default:
                ``vectors``).

        Raises:
            InputError: naming the field: ``vectors`` (or ``train``) empty, not a matrix, not
                finite, of different dimensions; too few training vectors for ``nlist``.
        """
        conf = conf or GlobalIndexConfig()
        x = _matrix(vectors, "vectors")
        if x.shape[0] < conf.exact_below:
            return cls(x, conf)
        t = x if train is None else _matrix(train, "train", x.shape[1])
        ivf = _train_ivf(t, conf, x.shape[0])
        _file(ivf, x)
        return cls(x, conf, ivf)

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors; their ids continue from :attr:`n`.

        An exact index that reaches ``exact_below`` is rebuilt as an inverted file trained on
        all its vectors, as :meth:`build` on them would be. An inverted file keeps its lists
        and training. Zero rows add nothing.

        Raises:
            InputError: naming ``vectors``: not a matrix of the index's dimension, not finite.
        """
        arr = np.asarray(vectors)
        if arr.ndim == 2 and arr.shape[0] == 0 and arr.shape[1] == self.dim:
            return
        x = _matrix(arr, "vectors", self.dim)
        self.vectors = np.concatenate([self.vectors, x])
        if self.ivf is not None:
            _file(self.ivf, x)
        elif self.n >= self.conf.exact_below:
            self.ivf = _train_ivf(self.vectors, self.conf, self.n)
            _file(self.ivf, self.vectors)
        else:
            return
        self._refresh()

    def tune(self, *, nprobe: int | None = None, rescore: int | None = None) -> None:
        """Change the search-time settings (no rebuild)."""
        changes = {k: v for k, v in (("nprobe", nprobe), ("rescore", rescore)) if v is not None}
        self.conf = replace(self.conf, **changes)
        if self._scan is not None:
            self._scan.nprobe = min(self.conf.nprobe, self._scan.nlist)

    @property
    def n(self) -> int:
        """Number of indexed vectors."""
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension ``D``."""
        return int(self.vectors.shape[1])

    @property
    def exact(self) -> bool:
        """True when searches are exact (brute force)."""
        return self.ivf is None

    def search(
        self, queries: np.ndarray, k: int, *, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors of each query.

        Args:
            queries: ``Q x D`` float32 queries (finite).
            k: results per query (at most :attr:`n` are returned).
            exact: rank by brute force even where the index is an inverted file.

        Returns:
            ``Q x K`` int64 ids, best first (ties: lower id), and ``Q x K`` float32 inner
            products, ``K = min(k, n)``. Exact below ``exact_below``; an inverted file that
            finds fewer than ``K`` candidates in its visited lists pads with id -1, score -inf.

        Raises:
            InputError: naming the field: ``queries`` empty, not ``Q x D``, not finite; ``k``
                not an integer >= 1.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        q = _matrix(queries, "queries", self.dim)
        k = min(int(k), self.n)
        if self._scan is None or exact:
            return rank_ip(self.vectors, q, k)
        _, cand = self._scan.search(q, min(self.n, k * self.conf.rescore))
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        sims = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        for i in range(q.shape[0]):
            c = np.sort(cand[i][cand[i] >= 0])  # id order: the stable sort below breaks ties
            s = self.vectors[c] @ q[i]
            top = np.argsort(-s, kind="stable")[:k]
            ids[i, : top.size] = c[top]
            sims[i, : top.size] = s[top]
        return ids, sims

    def _arrays(self) -> dict[str, np.ndarray]:
        ivf = np.zeros(0, np.uint8) if self.ivf is None else faiss.serialize_index(self.ivf)
        return {
            "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
            "config": np.asarray(json.dumps(asdict(self.conf))),
            "vectors": self.vectors,
            "ivf": ivf,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to an ``.npz`` file atomically."""
        return save_arrays(path, self._arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GlobalIndex:
        """An index written by :meth:`save`.

        Raises:
            InputError: naming the file and the array: unreadable, inconsistent arrays.
        """
        try:
            arrays = load_arrays(path)
        except (zipfile.BadZipFile, EOFError) as exc:  # a truncated file
            raise InputError(f"{path}: unreadable global index ({exc})") from None
        return cls._from_arrays(arrays, str(path))

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], where: str) -> GlobalIndex:
        for key in ("format_version", "config", "vectors", "ivf"):
            if key not in arrays:
                raise InputError(f"{where}: array '{key}' is missing")
        version = arrays["format_version"]
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            raise InputError(f"{where}: 'format_version' is not {FORMAT_VERSION}")
        try:
            conf = GlobalIndexConfig(**json.loads(str(arrays["config"])))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{where}: 'config' is malformed ({exc})") from None
        vec = _matrix(arrays["vectors"], f"{where}: array 'vectors'")
        data = arrays["ivf"]
        if data.ndim != 1 or data.dtype != np.uint8:
            raise InputError(f"{where}: 'ivf' must be a 1-d uint8 array")
        if data.size == 0:
            return cls(vec, conf)
        try:
            ivf = faiss.deserialize_index(data)  # already of its own class (IndexIVFPQ)
        except RuntimeError as exc:
            raise InputError(f"{where}: 'ivf' is not a faiss index ({exc})") from None
        n, dim = vec.shape
        if not (
            isinstance(ivf, faiss.IndexIVFPQ)
            and (ivf.d, ivf.ntotal, ivf.pq.nbits) == (dim, n, _PQ_BITS)
            and ivf.pq.M * conf.pq_dims == dim
        ):
            raise InputError(f"{where}: 'ivf' is not an IVF-PQ of the {n} x {dim} 'vectors'")
        return cls(vec, conf, ivf)


def _file(ivf: faiss.IndexIVFPQ, x: np.ndarray) -> None:
    """Append ``x`` to ``ivf`` (ids continue from ``ntotal``), each row under its nearest list."""
    lab, _ = _nearest(x, ivf.quantizer.reconstruct_n(0, ivf.nlist))
    ivf.add_core(x.shape[0], faiss.swig_ptr(x), None, faiss.swig_ptr(lab))
