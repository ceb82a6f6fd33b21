"""One interface over OpenCV's USAC robust estimators (MAGSAC++ by default).

Models map query points to database points: ``x_d ~ H x_q`` (homography), ``x_d = A x_q``
(affine, returned as a 3 x 3 matrix with last row ``0 0 1``) or ``x_d^T F x_q = 0``
(fundamental). Points are in original-image pixels, as in
:class:`~delfx.features.types.LocalFeatures`.

Determinism: OpenCV's USAC estimators start from a fixed random-generator state, and the classic
``cv2.RANSAC``/``cv2.LMEDS`` methods draw from ``cv::theRNG()``, which is thread-local; each call
here re-seeds it with :attr:`RansacConfig.seed`. The same input therefore always gives the same
model and mask, in any thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from delfx.errors import InputError
from delfx.features.types import LocalFeatures
from delfx.verify.matching import ratio_matches

logger = logging.getLogger(__name__)

#: Points in a minimal sample for each model.
MIN_SAMPLE = {"homography": 4, "fundamental": 8, "affine": 3}

#: Default ``min_inliers`` per model, for the score of :class:`VerifyResult` (distinct inlier
#: positions) on one-to-one ratio-test matches. Measured on the realviews photos (213 images, 1000
#: SIFT features each, ratio 0.9, 4 px, MAGSAC++): over 600 unrelated pairs the largest score was
#: 6 (H), 5 (affine) and 27 (F); the fundamental matrix only pins a point to a line, so chance
#: agreement is far higher. H and affine keep a 2x margin above those maxima (3 minimal samples);
#: F sits just above its maximum. 46% of the 232 same-scene pairs reach 12 (H), 46% reach 30 (F).
#: (The seed's counting, raw inliers of many-to-one matches, gave unrelated pairs up to 69.)
DEFAULT_MIN_INLIERS = {"homography": 12, "fundamental": 30, "affine": 12}


@dataclass(frozen=True)
class RansacConfig:
    """Settings of one robust model fit.

    Pass everything after ``model`` by name: the second field is ``method``, not the threshold.
    A non-integer ``method`` (e.g. ``RansacConfig("homography", 4.0)``) is refused when the
    config is used by :func:`estimate`, not when it is built.

    Attributes:
        model: ``"homography"``, ``"fundamental"`` or ``"affine"``.
        method: an OpenCV robust-method flag; default ``cv2.USAC_MAGSAC`` (MAGSAC++). Any
            ``cv2.USAC_*`` flag, ``cv2.RANSAC`` or ``cv2.LMEDS`` also works.
        threshold: the inlier threshold in pixels (reprojection error for H and affine, distance
            to the epipolar line for F). MAGSAC++ treats it as the largest noise level it
            considers. The seed used 4 px.
        max_iters: the most iterations (the seed used 2000).
        confidence: the confidence at which the sampler may stop early.
        min_inliers: the fewest inliers for a verified match; ``None`` picks the model's default
            from :data:`DEFAULT_MIN_INLIERS` (12 for H and affine, 30 for F). It may not be below
            the minimal sample (:data:`MIN_SAMPLE`: 4 for H, 8 for F, 3 for affine).
        seed: the seed given to ``cv2.setRNGSeed`` before every fit.
    """

    model: str = "homography"
    method: int = cv2.USAC_MAGSAC
    threshold: float = 4.0
    max_iters: int = 2000
    confidence: float = 0.999
    min_inliers: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MIN_SAMPLE:
            raise InputError(f"model must be one of {sorted(MIN_SAMPLE)}, got {self.model!r}")
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise InputError(f"threshold must be > 0 px, got {self.threshold}")
        if self.max_iters < 1:
            raise InputError(f"max_iters must be >= 1, got {self.max_iters}")
        if not 0.0 < self.confidence < 1.0:
            raise InputError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.min_inliers is None:
            object.__setattr__(self, "min_inliers", DEFAULT_MIN_INLIERS[self.model])
        elif self.min_inliers < MIN_SAMPLE[self.model]:
            raise InputError(
                f"min_inliers={self.min_inliers} is below the {self.model} minimal sample "
                f"of {MIN_SAMPLE[self.model]} points"
            )

    @property
    def min_sample(self) -> int:
        """Points in a minimal sample for :attr:`model`."""
        return MIN_SAMPLE[self.model]


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one query/database pair.

    Attributes:
        inliers: the verification score: the number of *distinct* inlier positions, the smaller
            of the distinct query and distinct database keypoint positions among the inlier
            correspondences (0 when no model was found). Counting distinct positions keeps
            many-to-one matches (and SIFT's duplicate keypoints, one per orientation) from
            inflating the score.
        n_matches: the number of tentative correspondences given to the estimator.
        model: the ``3 x 3`` float64 model, or ``None``.
        inlier_matches: ``L x 2`` int64 ``(query index, database index)`` rows of every inlier
            correspondence (``L >= inliers``).
    """

    inliers: int
    n_matches: int
    model: np.ndarray | None
    inlier_matches: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))


def _as_points(pts: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(pts, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{name}: expected M x 2 points, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def estimate(
    pts_q: np.ndarray, pts_d: np.ndarray, conf: RansacConfig
) -> tuple[np.ndarray | None, np.ndarray]:
    """Fit ``conf.model`` robustly to point correspondences.

    Args:
        pts_q: ``M x 2`` query points ``(x, y)`` in pixels.
        pts_d: ``M x 2`` corresponding database points.
        conf: the estimator settings.

    Returns:
        ``(model, mask)``: the ``3 x 3`` float64 model (``None`` when there are fewer than
        ``conf.min_sample`` points, the points are degenerate or no model was found) and the
        ``(M,)`` bool inlier mask (all False without a model).

    Raises:
        InputError: when the point arrays are malformed or differ in length.
    """
    q = _as_points(pts_q, "pts_q")
    d = _as_points(pts_d, "pts_d")
    if q.shape[0] != d.shape[0]:
        raise InputError(f"point counts differ: query {q.shape[0]}, db {d.shape[0]}")
    if isinstance(conf.method, bool) or not isinstance(conf.method, (int, np.integer)):
        raise InputError(
            f"RansacConfig.method must be an OpenCV flag (int), got {conf.method!r}; "
            "was the threshold passed by position?"
        )
    m = q.shape[0]
    none = np.zeros(m, dtype=bool)
    if m < conf.min_sample or not (np.isfinite(q).all() and np.isfinite(d).all()):
        return None, none
    cv2.setRNGSeed(conf.seed)
    try:
        if conf.model == "homography":
            model, mask = cv2.findHomography(
                q,
                d,
                method=conf.method,
                ransacReprojThreshold=conf.threshold,
                maxIters=conf.max_iters,
                confidence=conf.confidence,
            )
        elif conf.model == "fundamental":
            model, mask = cv2.findFundamentalMat(
                q, d, conf.method, conf.threshold, conf.confidence, conf.max_iters
            )
            if model is not None and model.shape != (3, 3):
                model = model[:3]  # the 7-point solver may stack several solutions
        else:
            model, mask = cv2.estimateAffine2D(
                q,
                d,
                method=conf.method,
                ransacReprojThreshold=conf.threshold,
                maxIters=conf.max_iters,
                confidence=conf.confidence,
            )
            if model is not None:
                model = np.vstack([model, [0.0, 0.0, 1.0]])
    except cv2.error as exc:
        logger.debug("%s estimation failed on %d points: %s", conf.model, m, exc)
        return None, none
    if model is None or mask is None or model.size == 0 or not np.isfinite(model).all():
        return None, none
    inl = np.asarray(mask).reshape(-1).astype(bool)
    if inl.shape[0] != m:
        return None, none
    return np.asarray(model, dtype=np.float64), inl


def verify_pair(
    query: LocalFeatures,
    db: LocalFeatures,
    conf: RansacConfig,
    *,
    matches: np.ndarray | None = None,
    ratio: float = 0.9,
    one_to_one: bool = True,
) -> VerifyResult:
    """Match two feature sets and count the correspondences consistent with one model.

    Args:
        query: the query image's features.
        db: the database image's features.
        conf: the estimator settings.
        matches: ``M x 2`` ``(query index, database index)`` tentative correspondences; ``None``
            computes :func:`~delfx.verify.matching.ratio_matches` on the descriptors.
        ratio: the ratio-test threshold used when ``matches`` is None.
        one_to_one: with ``matches`` None, keep one match per database feature (see
            :func:`~delfx.verify.matching.ratio_matches`); on by default because, without it,
            degenerate models make unrelated images look verified.

    Returns:
        The :class:`VerifyResult`. A pair with a model but fewer than ``conf.min_inliers``
        inliers still reports its count; deciding what counts as verified is the caller's.

    Raises:
        InputError: when a match index is out of range or the arrays are malformed.
    """
    if matches is None:
        matches = ratio_matches(
            query.descriptors, db.descriptors, ratio=ratio, one_to_one=one_to_one
        )
    mt = np.asarray(matches)
    if mt.size == 0:
        return VerifyResult(0, 0, None)
    if mt.ndim != 2 or mt.shape[1] != 2:
        raise InputError(f"matches: expected M x 2, got shape {mt.shape}")
    mt = mt.astype(np.int64, copy=False)
    if mt.min() < 0 or mt[:, 0].max() >= len(query) or mt[:, 1].max() >= len(db):
        raise InputError(
            f"matches: index out of range for {len(query)} query and {len(db)} db features"
        )
    model, mask = estimate(query.keypoints[mt[:, 0]], db.keypoints[mt[:, 1]], conf)
    if model is None:
        return VerifyResult(0, int(mt.shape[0]), None)
    inl = mt[mask]
    score = min(_distinct(query.keypoints[inl[:, 0]]), _distinct(db.keypoints[inl[:, 1]]))
    return VerifyResult(score, int(mt.shape[0]), model, inl)


def _distinct(points: np.ndarray) -> int:
    """The number of distinct rows of an ``L x 2`` point array."""
    return int(np.unique(points, axis=0).shape[0]) if points.shape[0] else 0
