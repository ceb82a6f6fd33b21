"""Scale run of the HE and ASMK* indexes on SYNTHETIC data: index memory and query latency.

Quantising 100k x 1000 real descriptors against a 16k codebook is out of reach on this machine
(1e8 x 16k x 128 multiply-adds), so the database postings are generated directly, already
encoded, with assumed statistics:

* word frequencies are Zipf-like, ``p_w ∝ (w + 1)^-s`` (``--zipf``, default 0.5: an imbalance
  factor ``W Σ p_w²`` of about 2.6, uneven like k-means lists; it is printed);
* burstiness: a fraction ``--burst`` (default 0.3) of each image's features repeats a word the
  image already uses, so an image has fewer distinct words (ASMK postings) than features;
* HE signatures and ASMK bits are uniform random (median thresholds make bits balanced).

A query is a database image's words and signatures (a few bits flipped) for the first
assignment plus ``ma - 1`` further Zipf-drawn words per feature; its top-1 must be that image.
"score" times ``score_encoded`` + top-100 ranking (search without verification); "encode" times
the real query side on 1000 random 128-d descriptors against a random 16k codebook (faiss flat
multiple assignment + signatures / aggregation); total = encode + score. Memory per image is
the inverted file's segment ``nbytes`` (ids, payload, offsets) over the number of images.

    .venv/bin/python benchmarks/he_asmk_scale.py [--quick] [--images 10000 100000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from delfx.index.asmk import ASMKIndex
from delfx.index.flat import rank
from delfx.index.hamming import HEParams, random_projection
from delfx.index.he import HEIndex
from delfx.index.invfile import InvertedFile, build_segment

SEG_IMAGES = 10_000  # images per segment (an incremental index's batch)


def zipf_p(n_words: int, s: float) -> np.ndarray:
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


def build_he(rng, n_images, n_feat, n_words, p, burst, centroids):
    params = HEParams(random_projection(centroids.shape[1]), np.zeros((n_words, 64)))
    segs, words_of = [], {}
    for first in range(0, n_images, SEG_IMAGES):
        b = min(SEG_IMAGES, n_images - first)
        w = image_words(rng, b, n_feat, p, burst)
        sig = rng.integers(0, 2**64 - 1, w.size, dtype=np.uint64, endpoint=True)
        ids = np.repeat(np.arange(first, first + b), n_feat)
        segs.append(build_segment(w.reshape(-1), ids, n_words, {"sig": sig}))
        if first == 0:
            words_of = {"w": w[:50].copy(), "sig": sig[: 50 * n_feat].reshape(50, n_feat)}
    ivf = InvertedFile(n_words, segs)
    return HEIndex(centroids, params, ivf, n_images, ma=3), words_of


def build_asmk(rng, n_images, n_feat, n_words, p, burst, centroids):
    n64 = -(-centroids.shape[1] // 64)
    segs, sample = [], {}
    for first in range(0, n_images, SEG_IMAGES):
        b = min(SEG_IMAGES, n_images - first)
        w, per = distinct_rows(image_words(rng, b, n_feat, p, burst))
        bits = rng.integers(0, 2**64 - 1, (w.size, n64), dtype=np.uint64, endpoint=True)
        ids = np.repeat(np.arange(first, first + b), per)
        segs.append(build_segment(w, ids, n_words, {"bits": bits}))
        if first == 0:
            ends = np.cumsum(per)
            sample = {"w": [w[e - c : e] for e, c in zip(ends[:50], per[:50], strict=True)]}
            sample["bits"] = [bits[e - c : e] for e, c in zip(ends[:50], per[:50], strict=True)]
    return ASMKIndex(centroids, InvertedFile(n_words, segs), n_images, ma=5), sample


def flip(rng, sig: np.ndarray, n: int) -> np.ndarray:
    out = sig.copy()
    for _ in range(n):
        out ^= np.left_shift(np.uint64(1), rng.integers(0, 64, sig.shape).astype(np.uint64))
    return out


def time_he(rng, index, sample, p, n_q):
    ma, n_feat = index.ma, sample["w"].shape[1]
    ms, ok, hits = [], 0, 0
    for q in range(n_q):
        j = q % len(sample["w"])
        extra = image_words(rng, 1, n_feat * (ma - 1), p, 0.0)[0]
        words = np.concatenate([sample["w"][j], extra]).astype(np.int64)
        sig = np.concatenate([flip(rng, sample["sig"][j], 3), rng.integers(0, 2**63, extra.size)])
        sig = sig.astype(np.uint64)
        t = time.perf_counter()
        ids, _ = rank(index.score_encoded(words, sig), 100)
        ms.append(1e3 * (time.perf_counter() - t))
        ok += int(ids[0] == j)
        hits += int(sum(np.diff(s.offsets)[words].sum() for s in index.ivf.segments))
    return float(np.mean(ms)), ok, hits / n_q


def time_asmk(rng, index, sample, p, n_q, n_feat):
    ms, ok, hits = [], 0, 0
    for q in range(n_q):
        j = q % len(sample["w"])
        extra = image_words(rng, 1, n_feat * (index.ma - 1), p, 0.0)[0]
        extra = np.setdiff1d(extra, sample["w"][j])
        words = np.concatenate([sample["w"][j], extra])
        bits = rng.integers(0, 2**63, (extra.size, index.n64)).astype(np.uint64)
        bits = np.concatenate([flip(rng, sample["bits"][j], 10), bits])
        t = time.perf_counter()
        ids, _ = rank(index.score_encoded(words, bits), 100)
        ms.append(1e3 * (time.perf_counter() - t))
        ok += int(ids[0] == j)
        hits += int(sum(np.diff(s.offsets)[words].sum() for s in index.ivf.segments))
    return float(np.mean(ms)), ok, hits / n_q


def time_encode(index, rng, dim, n_q=5) -> float:
    """Real query side: 1000 descriptors -> multiple assignment -> signatures / aggregation."""
    ms = []
    for _ in range(n_q):
        x = rng.standard_normal((1000, dim)).astype(np.float32)
        t = time.perf_counter()
        index.encode_query(x)
        ms.append(1e3 * (time.perf_counter() - t))
    return float(np.mean(ms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--words", type=int, default=16_384)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--zipf", type=float, default=0.5)
    ap.add_argument("--burst", type=float, default=0.3)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="10k images, 10 queries")
    args = ap.parse_args()
    if args.quick:
        args.images, args.queries = [10_000], 10
    rng = np.random.default_rng(0)
    p = zipf_p(args.words, args.zipf)
    centroids = rng.standard_normal((args.words, args.dim)).astype(np.float32)
    print(
        f"SYNTHETIC postings: {args.features} features/image, {args.words} words (random "
        f"centroids), D={args.dim}, Zipf s={args.zipf} (imbalance factor "
        f"{args.words * float(np.sum(p * p)):.2f}), burst={args.burst}, {args.queries} queries"
    )
    rows = []
    for n in args.images:
        for kind in ("he", "asmk"):
            t = time.perf_counter()
            if kind == "he":
                index, sample = build_he(
                    rng, n, args.features, args.words, p, args.burst, centroids
                )
                build_s = time.perf_counter() - t
                score_ms, ok, hits = time_he(rng, index, sample, p, args.queries)
            else:
                index, sample = build_asmk(
                    rng, n, args.features, args.words, p, args.burst, centroids
                )
                build_s = time.perf_counter() - t
                score_ms, ok, hits = time_asmk(rng, index, sample, p, args.queries, args.features)
            enc_ms = time_encode(index, rng, args.dim)
            t = time.perf_counter()
            index.add_encoded(*_one_image(index, rng, args.features))
            add_s = time.perf_counter() - t
            post = index.ivf.n_postings / n
            rows.append(
                (kind, n, post, index.nbytes() / n, hits, score_ms, enc_ms, ok, build_s, add_s)
            )
            print(f"  {kind} {n}: built in {build_s:.1f} s", flush=True)
            del index, sample
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        "| index | images | postings/img | bytes/img | hits/query | score ms | ns/hit | encode ms "
        "| total ms | top-1 ok | add 1 img s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, n, post, b, hits, sc, en, ok, _, add_s in rows:
        print(
            f"| {kind} | {n} | {post:.0f} | {b:.0f} | {hits / 1e6:.1f}M | {sc:.1f} "
            f"| {sc * 1e6 / max(hits, 1):.0f} | {en:.1f} | {sc + en:.1f} | {ok}/{args.queries} "
            f"| {add_s:.2f} |"
        )


def _one_image(index, rng, n_feat):
    """Encoded postings of one more image (times an add: derived state is recomputed)."""
    w = rng.integers(0, index.n_words, n_feat)
    if isinstance(index, HEIndex):
        return w, rng.integers(0, 2**63, n_feat).astype(np.uint64), [n_feat]
    w = np.unique(w)
    return w, np.zeros((w.size, index.n64), np.uint64), [w.size]


if __name__ == "__main__":
    main()
