"""Normalise ranked lists given in the field's shapes, and check them.

Two matrix layouts are in use:

- ``n_db x n_q``: column ``q`` is the full ranking of query ``q`` (revisitop's convention);
- ``n_q x k``: row ``q`` holds the top ``k`` of query ``q`` (``k`` may be below ``n_db``).

Both become one 1-D index array per query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from delfx.errors import InputError

LAYOUTS = ("auto", "db-by-query", "query-by-k")


def as_index_matrix(ranks: np.ndarray, source: str) -> np.ndarray:
    """Return ``ranks`` as an ``int64`` matrix, refusing scores and non-integral values."""
    arr = np.asarray(ranks)
    if arr.ndim != 2:
        raise InputError(f"{source}: expected a 2-D array of ranks, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise InputError(f"{source}: holds non-integer values; expected database indices, not scores")


def split_matrix(
    ranks: np.ndarray, n_db: int, n_q: int, source: str, layout: str = "auto"
) -> list[np.ndarray]:
    """Split a rank matrix into per-query lists.

    Args:
        ranks: ``n_db x n_q`` or ``n_q x k`` integer matrix.
        n_db: database size.
        n_q: number of queries.
        source: file name for error messages.
        layout: ``auto`` picks ``db-by-query`` when the shape is ``(n_db, n_q)``, else
            ``query-by-k`` when it has ``n_q`` rows.

    Returns:
        ``n_q`` arrays of database indices, best first.
    """
    mat = as_index_matrix(ranks, source)
    if layout not in LAYOUTS:
        raise InputError(f"layout '{layout}': expected one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        if mat.shape == (n_db, n_q):
            layout = "db-by-query"
        elif mat.shape[0] == n_q:
            layout = "query-by-k"
        else:
            raise InputError(
                f"{source}: shape {mat.shape} fits neither n_db x n_q = ({n_db}, {n_q}) "
                f"nor n_q x k with n_q = {n_q}"
            )
    if layout == "db-by-query":
        if mat.shape[1] != n_q:
            raise InputError(f"{source}: {mat.shape[1]} columns for {n_q} queries")
        lists = [mat[:, q] for q in range(n_q)]
    else:
        if mat.shape[0] != n_q:
            raise InputError(f"{source}: {mat.shape[0]} rows for {n_q} queries")
        lists = [mat[q] for q in range(n_q)]
    return check_lists(lists, n_db, source)


def check_lists(lists: Sequence[np.ndarray], n_db: int, source: str) -> list[np.ndarray]:
    """Check every list: integer indices in ``[0, n_db)`` without repeats.

    Returns:
        The lists as ``int64`` arrays.

    Raises:
        InputError: naming ``source``, the query and the offending index.
    """
    out = []
    for q, lst in enumerate(lists):
        arr = np.asarray(lst, dtype=np.int64).reshape(-1)
        bad = arr[(arr < 0) | (arr >= n_db)]
        if bad.size:
            raise InputError(
                f"{source}: query {q} ranks index {int(bad[0])}, out of range [0, {n_db})"
            )
        if np.unique(arr).size != arr.size:
            uniq, counts = np.unique(arr, return_counts=True)
            raise InputError(
                f"{source}: query {q} ranks index {int(uniq[counts > 1][0])} more than once"
            )
        out.append(arr)
    return out
