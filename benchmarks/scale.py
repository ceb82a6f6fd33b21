"""Search at scale on SYNTHETIC postings: build, bytes per image, open, search p50/p95.

Indexes of ``--images`` images x ``--features`` features are written to disk through delfx's own
index folder (:class:`delfx.index.storage.IndexDir`: segments of 10k images, stored statistics,
the quantizer saved with the model), reopened memory-mapped the way ``delfx search`` and a
collection open them, and queried. Postings are generated already encoded, with the statistics
of real ones:

* word frequencies Zipf-like, ``p_w ∝ (w + 1)^-s``, with ``s`` chosen so that the imbalance
  factor ``W Σ p_w²`` is ``--imbalance`` (default 1.1: k-means codebooks of 1024 and 4096 words
  trained on 218k RootSIFT descriptors of 240 realviews photos give 1.11, and ``ma = 5``
  queries of 30 other photos meet 1.08-1.09 times the postings of equal lists); ``--zipf``
  sets ``s`` directly instead;
* bursts: a share ``--burst`` (0.3) of each image's features repeats a word the image has;
* HE signatures and ASMK* bits uniform (median thresholds balance the bits), 128-d SIFT.

A query is a database image's words and signatures (a few bits flipped) plus ``ma - 1``
further Zipf-drawn words per feature (multiple assignment); its top-1 must be that image.
"search" is ``score_encoded`` plus the top-100 ranking, with the compiled kernels (quantisation
excluded; the kernels are warmed when the index opens). The queries run twice: the first pass
maps most of the pages it reads (page faults, and disk reads for what the page cache lacks);
the p50/p95 columns are the second pass, the steady state of a long-running searcher.
"quantise" times the real query side separately: 1000 SIFT-like descriptors against a
codebook of ``W`` SIFT-like centroids with the saved quantizer (IVF or HNSW), multiple
assignment ``ma``; its agreement with exact nearest-word search is measured on 2000
descriptors. "open" is manifest + model + memory-mapped segments + stored statistics. Memory is
bytes on disk per image (the index is memory-mapped: resident memory is what queries touch).

    .venv/bin/python benchmarks/scale.py --images 100000 [--kinds asmk he] [--words 16384 65536]
    .venv/bin/python benchmarks/scale.py --images 1000000 --kinds asmk --words 262144
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voctree import sift_like  # noqa: E402

from delfx import build_index  # noqa: E402
from delfx.index import kernels, local  # noqa: E402
from delfx.index.asmk import ASMKIndex  # noqa: E402
from delfx.index.flat import rank  # noqa: E402
from delfx.index.hamming import HEParams, random_projection  # noqa: E402
from delfx.index.he import HEIndex  # noqa: E402
from delfx.index.invfile import build_segment  # noqa: E402
from delfx.index.kmeans import Quantizer, assign  # noqa: E402
from delfx.index.storage import IndexDir  # noqa: E402

SEG_IMAGES = 10_000
DIM = 128
N64 = DIM // 64
KEEP = 50  # database images kept to make queries from


def zipf_p(n_words: int, s: float) -> np.ndarray:
    """``(W,)`` word frequencies ``p_w ∝ (w + 1)^-s``."""
    p = (np.arange(n_words) + 1.0) ** -s
    return p / p.sum()


def image_words(rng, n_img: int, n_feat: int, p: np.ndarray, burst: float) -> np.ndarray:
    """``(n_img, n_feat)`` int32 words with Zipf frequencies and in-image repeats."""
    n_fresh = max(1, round(n_feat * (1 - burst)))
    cdf = np.cumsum(p)
    fresh = np.searchsorted(cdf, rng.random((n_img, n_fresh)) * cdf[-1]).astype(np.int32)
    fresh = np.minimum(fresh, p.size - 1)
    rep = np.take_along_axis(fresh, rng.integers(0, n_fresh, (n_img, n_feat - n_fresh)), axis=1)
    return np.concatenate([fresh, rep], axis=1)


def distinct_rows(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct words per row, flattened (row-major), and their count per row."""
    s = np.sort(words, axis=1)
    keep = np.ones_like(s, dtype=bool)
    keep[:, 1:] = s[:, 1:] != s[:, :-1]
    return s[keep].astype(np.int64), keep.sum(axis=1)


def flip(rng, sig: np.ndarray, n: int) -> np.ndarray:
    """``sig`` with up to ``n`` random bits flipped in every uint64."""
    out = sig.copy()
    for _ in range(n):
        out ^= np.left_shift(np.uint64(1), rng.integers(0, 64, sig.shape).astype(np.uint64))
    return out


def zipf_for(n_words: int, imbalance: float) -> float:
    """The Zipf exponent whose word frequencies have this imbalance factor (bisection)."""
    lo, hi = 0.0, 2.0
    for _ in range(50):
        mid = (lo + hi) / 2
        p = zipf_p(n_words, mid)
        lo, hi = (mid, hi) if n_words * float(p @ p) < imbalance else (lo, mid)
    return (lo + hi) / 2


def _segment(rng, kind, first, b, n_feat, n_words, p, burst):
    """One segment of ``b`` images starting at id ``first``, and the postings of each image."""
    w = image_words(rng, b, n_feat, p, burst)
    if kind == "he":
        sig = rng.integers(0, 2**64 - 1, w.size, dtype=np.uint64, endpoint=True)
        ids = np.repeat(np.arange(first, first + b), n_feat)
        seg = build_segment(w.reshape(-1), ids, n_words, {"sig": sig})
        keep = {"w": list(w[:KEEP]), "p": list(sig[: KEEP * n_feat].reshape(-1, n_feat))}
        return seg, keep
    words, per = distinct_rows(w)
    bits = rng.integers(0, 2**64 - 1, (words.size, N64), dtype=np.uint64, endpoint=True)
    ids = np.repeat(np.arange(first, first + b), per)
    seg = build_segment(words, ids, n_words, {"bits": bits})
    ends = np.cumsum(per)[:KEEP]
    keep = {
        "w": [words[e - c : e] for e, c in zip(ends, per[:KEEP], strict=True)],
        "p": [bits[e - c : e] for e, c in zip(ends, per[:KEEP], strict=True)],
    }
    return seg, keep


def build(folder: Path, kind: str, n: int, n_feat: int, centroids, quantizer, p, burst, rng):
    """Write an index of ``n`` synthetic images to ``folder``; returns the query sample."""
    store = IndexDir(folder)
    if kind == "he":
        empty = HEIndex(centroids, HEParams(random_projection(DIM), np.zeros((len(p), 64))),
                        quantizer=quantizer, ma=3)  # fmt: skip
    else:
        empty = ASMKIndex(centroids, quantizer=quantizer, ma=5)
    meta, arrays = local.state_of(empty)
    with store.writing():
        model = store.write_model(arrays)
        files, sample = [], None
        for first in range(0, n, SEG_IMAGES):
            b = min(SEG_IMAGES, n - first)
            seg, keep = _segment(rng, kind, first, b, n_feat, len(p), p, burst)
            names = [f"img{i:07d}" for i in range(first, first + b)]
            files.append(store.write_segment(seg, names, first))
            sample = sample or keep
            del seg
        # the statistics an add stores, derived once from all (memory-mapped) segments
        segments, _ = store.read_segments({"segments": files, "n_images": n})
        full = local.restore({**meta, "n_images": n}, arrays, segments, n)
        stats = store.write_stats(local.stats_of(full), files, n)
        store.commit({"kind": kind, "meta": {**meta, "n_images": n}, "model": model,
                      "segments": files, "n_images": n, "stats": stats})  # fmt: skip
        del segments, full
    _save_sample(folder, sample)
    return sample


def _save_sample(folder: Path, sample: dict) -> None:
    counts = np.array([len(w) for w in sample["w"]])
    np.savez(folder.parent / f"{folder.name}.sample.npz", counts=counts,
             w=np.concatenate(sample["w"]), p=np.concatenate(sample["p"]))  # fmt: skip


def _load_sample(folder: Path) -> dict:
    with np.load(folder.parent / f"{folder.name}.sample.npz") as f:
        cuts = np.cumsum(f["counts"])[:-1]
        return {"w": np.split(f["w"], cuts), "p": np.split(f["p"], cuts)}


def queries(rng, kind, sample, p, n_feat, n_q):
    out = []
    for q in range(n_q):
        j = q % len(sample["w"])
        ma = 3 if kind == "he" else 5
        extra = image_words(rng, 1, n_feat * (ma - 1), p, 0.0)[0].astype(np.int64)
        if kind == "he":
            words = np.concatenate([sample["w"][j], extra]).astype(np.int64)
            more = rng.integers(0, 2**63, extra.size).astype(np.uint64)
            pay = np.concatenate([flip(rng, sample["p"][j], 3), more])
        else:
            extra = np.setdiff1d(extra, sample["w"][j])
            words = np.concatenate([sample["w"][j], extra])
            more = rng.integers(0, 2**63, (extra.size, N64)).astype(np.uint64)
            pay = np.concatenate([flip(rng, sample["p"][j], 10), more])
        out.append((j, words, pay.astype(np.uint64)))
    return out


def time_search(index, qs):
    ms, ok, hits = [], 0, 0
    for j, words, pay in qs:
        t = time.perf_counter()
        ids, _ = rank(index.score_encoded(words, pay), 100)
        ms.append(1e3 * (time.perf_counter() - t))
        ok += int(ids[0] == j)
        hits += int(sum(np.diff(s.offsets)[words].sum() for s in index.ivf.segments))
    return np.percentile(ms, 50), np.percentile(ms, 95), ok, hits / len(qs)


def time_quantise(quantizer, centroids, ma, rng, n_q=20):
    ms = []
    for _ in range(n_q):
        x = sift_like(1000, rng)
        t = time.perf_counter()
        quantizer.search(x, ma)
        ms.append(1e3 * (time.perf_counter() - t))
    x = sift_like(2000, rng)
    agree = float(np.mean(quantizer.search(x, 1)[:, 0] == assign(x, centroids)[:, 0]))
    return float(np.median(ms)), agree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[100_000])
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--words", type=int, nargs="+", default=[16_384, 65_536])
    ap.add_argument("--kinds", nargs="+", default=["asmk", "he"], choices=["asmk", "he"])
    ap.add_argument("--quantizer", default="hnsw", choices=Quantizer.KINDS)
    ap.add_argument("--imbalance", type=float, default=1.1)
    ap.add_argument("--zipf", type=float, default=None, help="Zipf exponent (overrides)")
    ap.add_argument("--burst", type=float, default=0.3)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--work", type=Path, default=None, help="folder for the indexes (temp)")
    ap.add_argument("--no-merge", action="store_true", help="skip merging the segments")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the indexes in this folder; reuse those there")  # fmt: skip
    args = ap.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="delfx-scale-", dir=args.work))
    rng = np.random.default_rng(0)
    print(f"backend {kernels.warm()}; {os.cpu_count()} cores; work folder {work}")
    rows = []
    try:
        for n_words in args.words:
            s = args.zipf if args.zipf is not None else zipf_for(n_words, args.imbalance)
            p = zipf_p(n_words, s)
            print(f"W={n_words}: Zipf s={s:.3f}, imbalance {n_words * float(p @ p):.2f}")
            centroids = sift_like(n_words, np.random.default_rng(1))
            t = time.perf_counter()
            quantizer = Quantizer(centroids, kind=args.quantizer)
            q_build = time.perf_counter() - t
            for kind in args.kinds:
                ma = 3 if kind == "he" else 5
                q_ms, agree = time_quantise(quantizer, centroids, ma, rng)
                for n in args.images:
                    folder = work / f"{kind}-{n_words}-{n}"
                    t = time.perf_counter()
                    if (folder / "index.json").is_file():
                        sample, build_s = _load_sample(folder), float("nan")
                    else:
                        sample = build(folder, kind, n, args.features, centroids, quantizer, p,
                                       args.burst, rng)  # fmt: skip
                        build_s = time.perf_counter() - t
                    qs = queries(rng, kind, sample, p, args.features, args.queries)
                    for stage in ("as built", "merged"):
                        merge_s = float("nan")
                        n_segs = len(IndexDir(folder).manifest()["segments"])
                        if stage == "merged":
                            if n_segs == 1 or args.no_merge:
                                break
                            t = time.perf_counter()
                            build_index.merge_segments(folder)
                            merge_s = time.perf_counter() - t
                            n_segs = 1
                        disk = sum(f.stat().st_size for f in folder.iterdir())
                        t = time.perf_counter()
                        index, names, _ = build_index.load(folder)
                        kernels.warm()
                        open_s = time.perf_counter() - t
                        time_search(index, qs[:3])  # map the pages of a few queries' lists
                        cold50, _, _, _ = time_search(index, qs)  # first touch of most pages
                        p50, p95, ok, hits = time_search(index, qs)  # pages mapped: steady
                        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                        row = (kind, n, n_words, n_segs, args.quantizer, q_build, build_s,
                               merge_s, disk / n, open_s, hits, cold50, p50, p95, q_ms, agree,
                               ok, len(qs), rss)  # fmt: skip
                        rows.append(row)
                        print(f"  {kind} W={n_words} N={n} ({n_segs} segments): built "
                              f"{build_s:.0f} s, open {open_s:.2f} s, p50 {p50:.1f} ms",
                              flush=True)  # fmt: skip
                        del index, names
                    if args.keep is None:
                        shutil.rmtree(folder)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"backend {kernels.backend()}")  # fmt: skip
    print("| index | images | words | segments | quantizer (build s) | build s | merge s "
          "| bytes/img | open s | hits/query | first pass p50 ms | search p50 ms | p95 ms "
          "| quantise ms | = exact NN | top-1 | peak RSS GB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind, n, w, ns, qk, qb, bs, ms, bpi, op, hits, c50, p50, p95, qms, agree, ok, nq, rss = r
        print(f"| {kind} | {n:,} | {w:,} | {ns} | {qk} ({qb:.0f}) | {bs:.0f} | {ms:.0f} "
              f"| {bpi:,.0f} | {op:.2f} | {hits / 1e6:.1f}M | {c50:.1f} | {p50:.1f} | {p95:.1f} "
              f"| {qms:.1f} | {agree:.3f} | {ok}/{nq} | {rss:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
