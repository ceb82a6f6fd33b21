"""Numba-compiled loops behind the vocabulary tree kernels of :mod:`delfx.index.voctree_kernels`.

Each public kernel is the compiled body of one function there, which chooses the backend and
allocates the outputs: ``train_nodes_nb`` of ``train_nodes``, ``assign_nb`` of ``assign``,
``regroup_nb`` of ``regroup``, ``descend_nb`` of ``descend``, ``canon_nb`` of
``canonical_children`` and ``sqnorms_nb`` of ``row_sqnorms``. They exist only when numba imports
(:func:`delfx.index.kernels.backend` then picks them unless ``DELFX_NUMBA=0``), run in parallel
over nodes or blocks of positions (a query's descent on one thread) and are cached on disk
(``cache=True``; :func:`~delfx.index.voctree_kernels.warm` compiles or loads them).

Shapes and the grouping of positions by node (``order``, ``seg``, ``lab``) are those of
:mod:`delfx.index.voctree_kernels`.
"""

from __future__ import annotations

import numpy as np

from delfx.index.kernels import numba

_CHUNK = 2048  # positions per parallel block of the numba assignment
_LOCKSTEP = 256  # descriptors descending together (one child block of 5 KiB each in cache)

if numba is not None:
    from llvmlite import binding as _llvm
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    # opaque pointers from LLVM 15 on
    _PREFETCH = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"

    @_intrinsic
    def _prefetch_at(typingctx, arr, row, col):  # pragma: no cover - compiled
        """Hint the CPU to fetch the cache line holding ``arr[row, col]`` (2-D, C order)."""
        sig = _types.void(arr, row, col)

        def codegen(context, builder, signature, args):
            a = context.make_array(signature.args[0])(context, builder, args[0])
            i64, i32, i8p = _ir.IntType(64), _ir.IntType(32), _ir.IntType(8).as_pointer()
            strides = [builder.extract_value(a.strides, k) for k in range(2)]
            at = builder.add(
                builder.ptrtoint(a.data, i64),
                builder.add(builder.mul(args[1], strides[0]), builder.mul(args[2], strides[1])),
            )
            fnty = _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32])
            fn = _cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
            hint = [_ir.Constant(i32, 0), _ir.Constant(i32, 3), _ir.Constant(i32, 1)]
            builder.call(fn, [builder.inttoptr(at, i8p), *hint])
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(cache=True, nogil=True)
    def _prefetch_row(x, r):  # pragma: no cover - compiled
        for k in range(0, x.shape[1], 64 // x.itemsize):
            _prefetch_at(x, r, k)

    @numba.njit(cache=True, nogil=True)
    def _sqnorm(v):  # pragma: no cover - compiled
        """Squared norm with a fixed summation order (8 interleaved partial sums)."""
        d = v.shape[0]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        k = 0
        while k + 8 <= d:
            a0 += v[k] * v[k]
            a1 += v[k + 1] * v[k + 1]
            a2 += v[k + 2] * v[k + 2]
            a3 += v[k + 3] * v[k + 3]
            a4 += v[k + 4] * v[k + 4]
            a5 += v[k + 5] * v[k + 5]
            a6 += v[k + 6] * v[k + 6]
            a7 += v[k + 7] * v[k + 7]
            k += 8
        while k < d:
            a0 += v[k] * v[k]
            k += 1
        return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))

    _FAST = {"reassoc", "contract", "nsz"}  # lets LLVM vectorise the dot products
    _AHEAD = 4  # rows prefetched ahead of use

    @numba.njit(cache=True, nogil=True, fastmath=_FAST)
    def _dot(x, r, c, j):  # pragma: no cover - compiled
        acc = np.float32(0.0)
        for k in range(c.shape[1]):
            acc += x[r, k] * c[j, k]
        return acc

    @numba.njit(cache=True, nogil=True)
    def _nearest_row(x, r, c, csq):  # pragma: no cover - compiled
        """Index of the centroid of ``c`` (B x D) nearest to ``x[r]`` (first on ties)."""
        best, best_d = 0, np.float32(0.0)
        for j in range(c.shape[0]):
            dist = csq[j] - np.float32(2.0) * _dot(x, r, c, j)
            if j == 0 or dist < best_d:
                best, best_d = j, dist
        return best

    @numba.njit(cache=True, nogil=True)
    def _mix(z):  # pragma: no cover - compiled
        """splitmix64's finaliser: a bijection of uint64 that looks random."""
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    @numba.njit(cache=True, nogil=True)
    def _smallest_keys(order, s, m, b, salt):  # pragma: no cover - compiled
        """The ``b`` rows of ``order[s:s + m]`` with the smallest keys ``_mix(row + salt)``,
        by increasing key."""
        keys = np.full(b, np.uint64(0xFFFFFFFFFFFFFFFF))
        rows = np.zeros(b, np.int64)
        for t in range(m):
            r = order[s + t]
            k = _mix(np.uint64(r) + salt)
            if k < keys[b - 1]:
                i = b - 1
                while i > 0 and keys[i - 1] > k:
                    keys[i], rows[i] = keys[i - 1], rows[i - 1]
                    i -= 1
                keys[i], rows[i] = k, r
        return rows

    @numba.njit(cache=True, nogil=True)
    def _update(x, order, s, m, c, csq, lab, sums, cnt):  # pragma: no cover - compiled
        """Centroids := means of their rows (float32 sums in position order; empty: kept)."""
        b, d = c.shape
        sums[:] = 0.0
        cnt[:] = 0
        for t in range(m):
            j, r = lab[s + t], order[s + t]
            cnt[j] += 1
            for k in range(d):
                sums[j, k] += x[r, k]
        for j in range(b):
            if cnt[j] > 0:
                f = np.float32(cnt[j])
                for k in range(d):
                    c[j, k] = sums[j, k] / f
                csq[j] = _sqnorm(c[j])

    @numba.njit(cache=True, nogil=True)
    def _lloyd_node(x, order, s, m, c, csq, niter, lab):  # pragma: no cover - compiled
        """Lloyd iterations on ``x[order[s:s + m]]`` from the centroids in ``c``, in place.

        Stops when an assignment repeats (a fixed point); an empty cluster keeps its centroid.
        ``lab[s:s + m]`` ends as the nearest final centroid of each row.

        Returns:
            The number of passes over the rows.
        """
        b, d = c.shape
        sums, cnt = np.zeros((b, d), np.float32), np.zeros(b, np.int64)
        for t in range(m):
            if t + _AHEAD < m:
                _prefetch_row(x, order[s + t + _AHEAD])
            lab[s + t] = _nearest_row(x, order[s + t], c, csq)
        passes = 1
        for _ in range(niter):
            _update(x, order, s, m, c, csq, lab, sums, cnt)
            passes += 1
            changed = False
            for t in range(m):
                j = _nearest_row(x, order[s + t], c, csq)
                if j != lab[s + t]:
                    lab[s + t] = j
                    changed = True
            if not changed:
                break
        return passes

    @numba.njit(cache=True, nogil=True, parallel=True)
    def train_nodes_nb(x, order, seg, parent, parent_sq, given, cap, niter, salt, out, out_sq,
                        src, lab, passes):  # fmt: skip  # pragma: no cover - compiled
        n_groups, b, d = out.shape
        for g in numba.prange(n_groups):
            s, n = seg[g], seg[g + 1] - seg[g]
            if given[g]:  # centroids already trained (faiss); rows assigned later
                for j in range(b):
                    out_sq[g, j] = _sqnorm(out[g, j])
                    src[g, j] = j
                for p in range(s, s + n):
                    lab[p] = -1
            elif n == 0:  # an empty node repeats its own centroid
                for j in range(b):
                    out[g, j, :] = parent[g]
                    out_sq[g, j] = parent_sq[g]
                    src[g, j] = 0
            elif n <= b:  # a tiny node takes its descriptors, repeated
                for j in range(b):
                    r = order[s + j % n]
                    out[g, j, :] = x[r]
                    out_sq[g, j] = _sqnorm(x[r])
                    src[g, j] = j % n
                for t in range(n):
                    lab[s + t] = t
            else:  # Lloyd on the first ``cap`` rows, from the B of them with the smallest keys
                m = min(n, cap)
                pick = _smallest_keys(order, s, m, b, salt)
                for j in range(b):
                    out[g, j, :] = x[pick[j]]
                    out_sq[g, j] = _sqnorm(out[g, j])
                    src[g, j] = j
                passes[g] = _lloyd_node(x, order, s, m, out[g], out_sq[g], niter, lab)
                for p in range(s + m, s + n):
                    lab[p] = -1

    @numba.njit(cache=True, nogil=True, parallel=True)
    def assign_nb(x, order, seg, blocks, sq, lab):  # pragma: no cover - compiled
        n = order.shape[0]
        for chunk in numba.prange((n + _CHUNK - 1) // _CHUNK):
            p0 = chunk * _CHUNK
            g = np.searchsorted(seg, p0, side="right") - 1
            p1 = min(n, p0 + _CHUNK)
            for p in range(p0, p1):
                while seg[g + 1] <= p:
                    g += 1
                if p + _AHEAD < p1 and lab[p + _AHEAD] < 0:
                    _prefetch_row(x, order[p + _AHEAD])
                if lab[p] < 0:
                    lab[p] = _nearest_row(x, order[p], blocks[g], sq[g])

    @numba.njit(cache=True, nogil=True, parallel=True)
    def regroup_nb(order, seg, lab, canon, new_order, new_seg, first, node_of):
        # pragma: no cover - compiled
        n_groups, b = canon.shape
        for g in numba.prange(n_groups):
            s, e = seg[g], seg[g + 1]
            base = g * b  # new_seg[base:base + b] counts, then starts, then ends of the children
            for j in range(b):
                new_seg[base + j] = 0
            for p in range(s, e):
                new_seg[base + canon[g, lab[p]]] += 1
            at = s
            for j in range(b):
                at, new_seg[base + j] = at + new_seg[base + j], at
            for p in range(s, e):
                j = canon[g, lab[p]]
                new_order[new_seg[base + j]] = order[p]
                new_seg[base + j] += 1
                if node_of.shape[0]:
                    node_of[order[p]] = (first + g) * b + 1 + j
            for j in range(b - 1, 0, -1):  # ends back to starts
                new_seg[base + j] = new_seg[base + j - 1]
            new_seg[base] = s
        new_seg[n_groups * b] = seg[n_groups]

    @numba.njit(cache=True, nogil=True)
    def descend_nb(x, blocks, flat, sq, canon, paths):  # pragma: no cover - compiled
        # serial (a query should not wait for a busy second core); _LOCKSTEP descriptors go
        # down together, so the child block each one needs next is fetched while the others
        # are compared
        n, height = paths.shape
        b = blocks.shape[1]
        for i0 in range(0, n, _LOCKSTEP):
            i1 = min(n, i0 + _LOCKSTEP)
            for level in range(height):
                for i in range(i0, i1):
                    node = 0 if level == 0 else paths[i, level - 1]
                    node = node * b + 1 + canon[node, _nearest_row(x, i, blocks[node], sq[node])]
                    paths[i, level] = node
                    if level + 1 < height:
                        _prefetch_row(flat, node)

    @numba.njit(cache=True, nogil=True, parallel=True)
    def canon_nb(blocks, src, canon):  # pragma: no cover - compiled
        n_groups, b, d = blocks.shape
        for g in numba.prange(n_groups):
            for j in range(b):
                canon[g, j] = j
                if src[g, j] != j:  # a copy: the canon of what it copies
                    canon[g, j] = canon[g, src[g, j]]
                    continue
                for k in range(j):  # the first earlier original with the same centroid
                    if src[g, k] != k:
                        continue
                    same = True
                    for i in range(d):
                        if blocks[g, k, i] != blocks[g, j, i]:
                            same = False
                            break
                    if same:
                        canon[g, j] = k
                        break

    @numba.njit(cache=True, nogil=True, parallel=True)
    def sqnorms_nb(c, out):  # pragma: no cover - compiled
        for i in numba.prange(c.shape[0]):
            out[i] = _sqnorm(c[i])
