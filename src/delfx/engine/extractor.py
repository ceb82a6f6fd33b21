"""The extractor of an engine: a photo in, its local features and global descriptor out.

Built from an :class:`~delfx.engine.spec.EngineSpec`, so that the photos a collection indexes
and the photos it is queried with go through the same code with the same settings. A photo is
a path, the bytes of an image file, or an ``H x W x 3`` ``uint8`` array, with an optional box
``(x0, y0, x1, y1)`` in its pixels: the features come from the box, keypoints stay in the full
photo's pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from delfx.engine.spec import EngineSpec
from delfx.errors import InputError
from delfx.features.sift import PRESETS as SIFT_PRESETS
from delfx.features.sift import SiftConfig, extract_sift
from delfx.features.types import LocalFeatures
from delfx.io.images import crop_box, read_image

logger = logging.getLogger(__name__)

#: What a query may be: a file, the bytes of one, or a decoded RGB array.
Photo = Union[str, os.PathLike, bytes, np.ndarray]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class Described:
    """One photo, described.

    Attributes:
        local: its local features (keypoints in the full photo's pixels).
        global_vec: ``(D,)`` float32 unit global descriptor, or None for a local-only spec.
    """

    local: LocalFeatures
    global_vec: np.ndarray | None


def load_photo(photo: Photo, label: str = "photo") -> np.ndarray:
    """Decode a photo (path, bytes or array) to ``H x W x 3`` ``uint8`` RGB, checked.

    Raises:
        InputError: not an image, truncated, over the pixel cap, or an array of another shape.
    """
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise InputError(
                f"{label}: expected an H x W x 3 uint8 array, got {photo.shape} {photo.dtype}"
            )
        return photo
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return read_image(Path(label), data=bytes(photo))
    return read_image(photo)


def sift_config(spec: EngineSpec) -> SiftConfig:
    """The SIFT settings of a spec.

    Raises:
        InputError: the spec's local features are DELF (not supported by collections yet).
    """
    preset = spec.sift_preset
    if preset is None:
        raise InputError(
            f"pipeline '{spec.name}': collections support SIFT pipelines and their global "
            "hybrids; DELF features need 'delfx run' for now"
        )
    if preset not in SIFT_PRESETS:
        raise InputError(f"pipeline '{spec.name}': unknown SIFT preset '{preset}'")
    return SIFT_PRESETS[preset]


class Extractor:
    """Describes photos as a spec says; the global network is loaded on first use.

    Args:
        spec: the engine's spec.
        device: torch device of the global network.
    """

    def __init__(self, spec: EngineSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.sift = sift_config(spec)
        self.device = device
        self._net: Any = None

    @property
    def store_config(self) -> dict[str, Any]:
        """The feature-store config of the local features (as ``delfx extract sift`` writes)."""
        return {"extractor": "sift", **asdict(self.sift)}

    def local(self, image: np.ndarray, box: Sequence[float] | None = None) -> LocalFeatures:
        """Local features of an ``H x W x 3`` ``uint8`` image (of its box when given)."""
        h, w = image.shape[:2]
        if box is None:
            return extract_sift(image, self.sift)
        crop = crop_box(image, box)
        x1, y1 = max(0, round(box[0])), max(0, round(box[1]))
        return extract_sift(crop, self.sift, offset=(x1, y1), image_size=(w, h))

    def network(self) -> Any:
        """The global network (loaded once)."""
        if self._net is None:
            opts = self.spec.global_opts
            if opts is None:
                raise InputError(f"pipeline '{self.spec.name}' has no global descriptor")
            from delfx.extract_global import resolve_model

            self._net = resolve_model(
                opts.model, pretrained=opts.pretrained, pooling=opts.pooling, device=self.device
            )
        return self._net

    def global_vectors(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """``N x D`` float32 unit global descriptors of whole images (read one at a time)."""
        from delfx.models.describe import describe_images

        opts = self.spec.global_opts
        assert opts is not None
        return describe_images(
            self.network(),
            images,
            image_size=opts.image_size,
            scales=opts.scales,
            device=self.device,
        )

    def describe(
        self, photo: Photo, box: Sequence[float] | None = None, label: str = "photo"
    ) -> Described:
        """Local features and (for a hybrid spec) the global descriptor of one photo."""
        image = load_photo(photo, label)
        if box is not None:
            crop_box(image, box)  # refuses an empty box before any work
        local = self.local(image, box)
        vec = None
        if self.spec.uses_global:
            part = image if box is None else crop_box(image, box)
            vec = self.global_vectors([np.ascontiguousarray(part)])[0]
        return Described(local, vec)
