"""What a retrieval engine is: local features, index, optional global descriptor, combination.

An :class:`EngineSpec` is frozen and serialisable: a collection's manifest records it, and a
:class:`~delfx.engine.searcher.Searcher` rebuilds its extractor from it. The named pipelines of
``delfx run`` (:data:`delfx.run_presets.PIPELINES`) are the named specs (:func:`named`).

How results combine (:attr:`EngineSpec.combine`):

- ``local``: the local index ranks every image; the top ``verify`` are spatially verified.
- ``global-verify``: the global descriptor ranks; its top ``verify`` are verified with the
  local features (DELG's two stages).
- ``fused``: the local index score plus ``fusion_weight`` times the global cosine similarity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from delfx.errors import InputError
from delfx.global_options import GlobalOptions
from delfx.index.local import IndexConfig
from delfx.rerank import RerankConfig
from delfx.run_presets import PIPELINES, PipelineConfig
from delfx.verify.ransac import RansacConfig

COMBINES = ("local", "global-verify", "fused")

#: The global descriptor of the hybrid specs when none is given: ImageNet EfficientNet-Lite0 GeM
#: at 512 px, training-free (``delfx[pretrained]``).
DEFAULT_GLOBAL = GlobalOptions(model="efficientnet_lite0", pretrained="imagenet", image_size=512)

#: The best landed pipeline for real photos on a CPU (the README's pretrained table).
DEFAULT_COLLECTION = "global+sift-asmk"

#: Verification a collection query runs by default (candidates), when the spec verifies none.
DEFAULT_VERIFY = 20


@dataclass(frozen=True)
class EngineSpec:
    """A retrieval system, from photo to ranked names.

    Attributes:
        name: the named spec it came from (e.g. ``sift-asmk``).
        pipeline: features, index, verification and combination settings.
        global_opts: the global descriptor (None for a local-only spec).
    """

    name: str
    pipeline: PipelineConfig
    global_opts: GlobalOptions | None = None

    def __post_init__(self) -> None:
        if self.uses_global and self.global_opts is None:
            raise InputError(f"spec '{self.name}': a global descriptor is needed")

    @property
    def combine(self) -> str:
        """``local``, ``global-verify`` or ``fused`` (see the module docstring)."""
        if self.pipeline.global_first:
            return "global-verify"
        return "fused" if self.pipeline.fuse_global else "local"

    @property
    def uses_global(self) -> bool:
        """True when the spec ranks with a global descriptor."""
        return self.pipeline.global_first or self.pipeline.fuse_global

    @property
    def uses_index(self) -> bool:
        """True when the spec ranks with a local index (not only the global shortlist)."""
        return not self.pipeline.global_first

    @property
    def verify(self) -> int:
        """Candidates verified per query by default."""
        return self.pipeline.rerank.rerank_num

    @property
    def sift_preset(self) -> str | None:
        """The SIFT preset of the local features, or None for DELF features."""
        feats = self.pipeline.features
        return None if feats.startswith("delf:") else feats

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (see :func:`from_dict`)."""
        pipe = self.pipeline
        rr = pipe.rerank
        return {
            "name": self.name,
            "combine": self.combine,
            "features": pipe.features,
            "index": asdict(pipe.index),
            "codebook_on_database": pipe.codebook_on_database,
            "rerank": {**asdict(rr), "ransac": asdict(rr.ransac)},
            "pca_dim": pipe.pca_dim,
            "fusion_weight": pipe.fusion_weight,
            "global": None if self.global_opts is None else _global_dict(self.global_opts),
        }


def _global_dict(opts: GlobalOptions) -> dict[str, Any]:
    d = asdict(opts)
    d["scales"] = list(opts.scales)
    return d


def named(
    name: str,
    *,
    global_opts: GlobalOptions | None = None,
    index: dict[str, Any] | None = None,
    verify: int | None = None,
) -> EngineSpec:
    """The spec of a named pipeline, with optional overrides.

    Args:
        name: a key of :data:`~delfx.run_presets.PIPELINES`.
        global_opts: the global descriptor of a hybrid spec (default :data:`DEFAULT_GLOBAL`).
        index: index settings to replace (e.g. ``{"n_words": 4096}``).
        verify: candidates to verify by default (None: the pipeline's own).

    Raises:
        InputError: an unknown name.
    """
    if name not in PIPELINES:
        raise InputError(f"pipeline '{name}': expected one of {', '.join(PIPELINES)}")
    pipe = PIPELINES[name]
    if index:
        pipe = replace(pipe, index=replace(pipe.index, **index))
    if verify is not None:
        pipe = replace(pipe, rerank=replace(pipe.rerank, rerank_num=int(verify)))
    uses_global = pipe.global_first or pipe.fuse_global
    opts = (global_opts or DEFAULT_GLOBAL) if uses_global else None
    return EngineSpec(name, pipe, opts)


def from_dict(data: Any, where: str) -> EngineSpec:
    """Rebuild a spec written by :meth:`EngineSpec.to_dict`.

    Args:
        data: the parsed JSON.
        where: the file it came from, named in errors.

    Raises:
        InputError: one line naming ``where`` and the field.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: field 'spec' must be an object")
    try:
        rr = dict(data["rerank"])
        ransac = RansacConfig(**rr.pop("ransac"))
        pipe = PipelineConfig(
            features=str(data["features"]),
            index=IndexConfig(**data["index"]),
            codebook_on_database=bool(data["codebook_on_database"]),
            rerank=RerankConfig(**rr, ransac=ransac),
            pca_dim=data["pca_dim"],
            global_first=data["combine"] == "global-verify",
            fuse_global=data["combine"] == "fused",
            fusion_weight=float(data["fusion_weight"]),
        )
        g = data["global"]
        opts = None if g is None else GlobalOptions(**{**g, "scales": tuple(g["scales"])})
        if data["combine"] not in COMBINES:
            raise InputError(f"combine '{data['combine']}': expected one of {COMBINES}")
        return EngineSpec(str(data["name"]), pipe, opts)
    except KeyError as exc:
        raise InputError(f"{where}: field 'spec.{exc.args[0]}' is missing") from None
    except InputError as exc:
        raise InputError(f"{where}: field 'spec': {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: field 'spec' is malformed ({exc})") from None
