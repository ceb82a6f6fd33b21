"""Rankings files: ``.npy`` matrices, ``.npz`` search outputs and plain-text ranked lists.

``.npz`` files written by ``delfx search`` and ``delfx rerank`` hold a ``ranks`` array
(``n_q x k``). Text format: one line per query, in query order, holding whitespace-separated
database indices or image names, best first. A line may start with ``<query name>:``; when
every line does, lines are matched to queries by name, in any order. Blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from delfx.errors import InputError
from delfx.evaluation.rankings import as_index_matrix, check_lists, split_matrix
from delfx.io import atomic


def load_rankings(
    path: str | os.PathLike[str],
    images: Sequence[str],
    queries: Sequence[str],
    *,
    layout: str = "auto",
) -> list[np.ndarray]:
    """Read a rankings file into one index array per query.

    Args:
        path: ``.npy`` (``n_db x n_q`` or ``n_q x k``), ``.npz`` with ``ranks``, or text.
        images: database image names (``imlist``).
        queries: query names (``qimlist``).
        layout: for ``.npy``: ``auto``, ``db-by-query`` or ``query-by-k``.

    Returns:
        ``len(queries)`` ``int64`` arrays of database indices, best first.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: rankings file not found")
    if path.suffix == ".npz":
        arrays = _read_npz(path)
        if "ranks" not in arrays:
            raise InputError(f"{path}: no 'ranks' array (files: {', '.join(arrays)})")
        return split_matrix(arrays["ranks"], len(images), len(queries), str(path), "query-by-k")
    if path.suffix == ".npy":
        try:
            mat = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
        return split_matrix(mat, len(images), len(queries), str(path), layout)
    return _parse_text(path, images, queries)


def load_search_output(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read the ``.npz`` written by ``delfx search``: ``ranks``, ``scores`` and ``queries``.

    Returns:
        ``(ranks, scores, queries)``: ``Q x K`` int64 image ids, ``Q x K`` float64 scores and
        the ``Q`` query names. The ids are not range-checked here (the index size is needed:
        see :func:`delfx.verify.rerank.check_ranked_ids`).

    Raises:
        InputError: one line naming the file: missing, unreadable, an array missing or of the
            wrong shape or type.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ranks file not found")
    arrays = _read_npz(path)
    for key in ("ranks", "scores", "queries"):
        if key not in arrays:
            raise InputError(f"{path}: missing array '{key}' (write it with delfx search)")
    ranks, scores, queries = arrays["ranks"], arrays["scores"], arrays["queries"]
    ranks = as_index_matrix(ranks, f"{path}: 'ranks'")
    if queries.ndim != 1 or queries.shape[0] != ranks.shape[0]:
        raise InputError(f"{path}: {queries.size} query names for {ranks.shape[0]} ranked lists")
    if scores.shape != ranks.shape or scores.dtype.kind not in "iuf":
        raise InputError(f"{path}: 'scores' of shape {scores.shape}, expected {ranks.shape}")
    return ranks, scores.astype(np.float64, copy=False), [str(q) for q in queries]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, never unpickling; an unreadable file is one line."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None


def _parse_text(path: Path, images: Sequence[str], queries: Sequence[str]) -> list[np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text or .npy rankings file") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    name_to_idx = {n: i for i, n in enumerate(images)}
    named = bool(lines) and all(":" in ln.split()[0] for ln in lines)
    lists: list[np.ndarray | None] = [None] * len(queries)
    if named:
        q_index = {n: i for i, n in enumerate(queries)}
        for number, ln in enumerate(lines, 1):
            qname, _, rest = ln.partition(":")
            if qname.strip() not in q_index:
                raise InputError(f"{path}:{number}: unknown query '{qname.strip()}'")
            lists[q_index[qname.strip()]] = _tokens(rest.split(), name_to_idx, path, number)
        missing = [queries[q] for q, lst in enumerate(lists) if lst is None]
        if missing:
            raise InputError(f"{path}: no ranked list for query '{missing[0]}'")
    else:
        if len(lines) != len(queries):
            raise InputError(f"{path}: {len(lines)} ranked lists for {len(queries)} queries")
        lists = [_tokens(ln.split(), name_to_idx, path, n) for n, ln in enumerate(lines, 1)]
    return check_lists(lists, len(images), str(path))  # type: ignore[arg-type]


def _tokens(tokens: list[str], name_to_idx: dict[str, int], path: Path, number: int) -> np.ndarray:
    out = np.empty(len(tokens), dtype=np.int64)
    for i, tok in enumerate(tokens):
        if tok.lstrip("-").isdigit():
            out[i] = int(tok)
        elif tok in name_to_idx:
            out[i] = name_to_idx[tok]
        else:
            raise InputError(f"{path}:{number}: unknown database image '{tok}'")
    return out


def save_rankings(path: str | os.PathLike[str], ranks: np.ndarray) -> Path:
    """Save an ``n_q x k`` integer rank matrix as ``.npy``, atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(ranks, dtype=np.int64), allow_pickle=False)
    return atomic.write_bytes(path, buf.getvalue())
