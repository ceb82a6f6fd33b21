"""Spatial verification and re-ranking: tentative matches, USAC/MAGSAC++ model fitting, and
re-ordering a first-stage shortlist by inlier count (pure functions, no file I/O).

Submodules: :mod:`delfx.verify.matching` (ratio-test and visual-word correspondences),
:mod:`delfx.verify.ransac` (one interface over OpenCV's USAC estimators) and
:mod:`delfx.verify.rerank` (shortlist, parallel verification and the re-ranking rule).
"""
