"""DELF local features: the strongest attention locations of a CNN feature map, over scales.

The image is resized so that its longer side is ``image_size * s`` for each scale ``s`` (as
:func:`~delfx.models.describe.resize_to` does: Lanczos to shrink, bicubic to enlarge), each level
goes through :meth:`~delfx.models.attention.AttentionNet.local`, and the ``feature_num``
locations of highest attention across all levels, at or above ``alpha_thresh``, are kept (the
seed's ``--feature-num`` and ``--alpha-thresh``). A location gives its descriptor (L2-normalised,
optionally PCA-reduced and normalised again), its attention as score, the centre of its cell as
keypoint (see :mod:`delfx.models.receptive`) mapped back to the original image, and its
receptive-field size as scale.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from delfx.errors import InputError
from delfx.features.delf_config import PRESETS, DelfConfig
from delfx.features.types import LocalFeatures
from delfx.models.attention import AttentionNet
from delfx.models.describe import resize_to, to_tensor
from delfx.models.receptive import attention_geometry

logger = logging.getLogger(__name__)


def select_top(
    scores_per_scale: Sequence[np.ndarray], n: int, thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` highest scores at or above ``thresh`` across several score maps.

    Ties are broken by map, then by flat (row-major) index, so the result is deterministic.

    Args:
        scores_per_scale: one score map per scale, any shape.
        n: at most this many entries.
        thresh: keep only entries ``>= thresh`` (NaN is never kept).

    Returns:
        ``(scale_index, flat_index)``, both ``(k,)`` int64, ``k <= n``, best first.
    """
    flat = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_per_scale]
    if not flat:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sizes = np.array([f.size for f in flat], dtype=np.int64)
    allv = np.concatenate(flat)
    keep = np.flatnonzero(allv >= thresh)
    order = keep[np.argsort(-allv[keep], kind="stable")][: max(0, int(n))]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    scale = np.searchsorted(bounds, order, side="right") - 1
    return scale.astype(np.int64), (order - bounds[scale]).astype(np.int64)


def _l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)).astype(np.float32)


def _pyramid(image: np.ndarray, conf: DelfConfig, stride: float) -> list[np.ndarray]:
    """The image resized to every usable scale of ``conf`` (at least ``stride`` pixels a side).

    Raises:
        InputError: the image is smaller than ``stride`` at scale 1, or at every scale.
    """
    h, w = image.shape[:2]
    levels = []
    for s in conf.scales:
        resized = resize_to(image, max(1, round(conf.image_size * s)))
        if min(resized.shape[:2]) >= stride:
            levels.append(resized)
            continue
        rh, rw = resized.shape[:2]
        msg = (
            f"image of {w}x{h} pixels is {rw}x{rh} at scale {s:g} (longer side "
            f"{conf.image_size}), smaller than the network's stride of {stride:g} pixels"
        )
        if s == 1.0:
            raise InputError(msg)
        logger.debug("skipping a pyramid level: %s", msg)
    if not levels:
        raise InputError(
            f"image of {w}x{h} pixels is smaller than the network's stride of {stride:g} "
            f"pixels at every scale {list(conf.scales)} (longer side {conf.image_size})"
        )
    return levels


@contextlib.contextmanager
def _inference(net: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """``net`` on ``device`` in eval mode (its mode restored after), under inference mode, with
    float16 autocast on CUDA only."""
    was_training = net.training
    net.to(device).eval()
    cuda = device.type == "cuda"
    try:
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=cuda):
            yield
    finally:
        net.train(was_training)


def extract_delf(
    net: AttentionNet,
    image: np.ndarray,
    conf: DelfConfig,
    *,
    device: str | torch.device = "cpu",
    offset: tuple[float, float] = (0.0, 0.0),
    image_size: tuple[int, int] | None = None,
    pca: tuple[np.ndarray, np.ndarray] | None = None,
) -> LocalFeatures:
    """DELF features of one image.

    Args:
        net: the attention network (moved to ``device``, run in eval mode; its mode is restored).
        image: ``H x W x 3`` ``uint8`` RGB array.
        conf: image size, scales, number of features and attention threshold.
        device: where to run; automatic mixed precision is used on CUDA only.
        offset: ``(x, y)`` added to every keypoint, e.g. the corner of a query's crop.
        image_size: ``(width, height)`` to record (default: ``image``'s); for a crop, the full
            image's.
        pca: ``(mean (D,), projection d x D)`` applied to the L2-normalised descriptors, which
            are then L2-normalised again.

    Returns:
        At most ``conf.feature_num`` features, highest attention first: keypoints ``N x 2`` in
        ``image``'s pixels (centres at ``+0.5``) plus ``offset``; scales = receptive-field size
        in those pixels; orientations ``-1``; scores = attention; descriptors ``N x D`` (or
        ``N x d`` with ``pca``) float32 unit rows.

    Raises:
        InputError: a bad image, an image smaller than the network's stride at scale 1 (or at
            every scale), or a PCA that does not fit the descriptors.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image: expected H x W x 3 uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    size = (w, h) if image_size is None else (int(image_size[0]), int(image_size[1]))
    geom = attention_geometry(net)
    dim = net.local_dim
    if pca is not None:
        mean, proj = (np.asarray(a, dtype=np.float32) for a in pca)
        if mean.shape != (dim,) or proj.ndim != 2 or proj.shape[1] != dim:
            raise InputError(
                f"PCA: expected mean ({dim},) and projection d x {dim}, "
                f"got {mean.shape} and {proj.shape}"
            )
    levels = _pyramid(image, conf, geom.stride)

    device = torch.device(device)
    descs, atts = [], []
    with _inference(net, device):
        for resized in levels:
            x = to_tensor(resized, net.mean, net.std)[None].to(device)
            d, a = net.local(x)
            descs.append(d[0].flatten(1))  # D x (h w), stays on the device
            atts.append(a[0].float().cpu().numpy())

    level_idx, flat_idx = select_top(atts, conf.feature_num, conf.alpha_thresh)
    n = level_idx.size
    if n == 0:
        return LocalFeatures.empty(dim if pca is None else int(pca[1].shape[0]), size)
    desc = np.empty((n, descs[0].shape[0]), dtype=np.float32)
    xy = np.empty((n, 2), dtype=np.float64)
    scales = np.empty(n, dtype=np.float64)
    scores = np.empty(n, dtype=np.float32)
    for li, resized in enumerate(levels):
        sel = np.flatnonzero(level_idx == li)
        if sel.size == 0:
            continue
        cells = flat_idx[sel]
        index = torch.from_numpy(cells).to(descs[li].device)
        desc[sel] = descs[li].index_select(1, index).float().T.cpu().numpy()
        map_w = atts[li].shape[1]
        rows, cols = np.divmod(cells, map_w)
        rh, rw = resized.shape[:2]
        sx, sy = w / rw, h / rh  # continuous pixel coordinates scale exactly with the image
        xy[sel, 0] = (cols * geom.stride + geom.offset) * sx + float(offset[0])
        xy[sel, 1] = (rows * geom.stride + geom.offset) * sy + float(offset[1])
        scales[sel] = geom.size * math.sqrt(sx * sy)
        scores[sel] = atts[li].reshape(-1)[cells]
    desc = _l2n(desc)
    if pca is not None:
        desc = _l2n((desc - mean) @ proj.T)
    return LocalFeatures(
        keypoints=xy.astype(np.float32),
        scales=scales.astype(np.float32),
        orientations=np.full(n, -1.0, dtype=np.float32),
        descriptors=np.ascontiguousarray(desc),
        scores=scores,
        image_size=size,
    )


__all__ = ["PRESETS", "DelfConfig", "extract_delf", "select_top"]
