"""The named pipelines of ``delfx run``: what each extracts, indexes, verifies and fuses."""

from __future__ import annotations

from dataclasses import dataclass, field

from delfx.index.local import IndexConfig
from delfx.rerank import RerankConfig
from delfx.verify.ransac import RansacConfig


@dataclass(frozen=True)
class PipelineConfig:
    """A named experiment.

    Attributes:
        features: SIFT preset (``seed`` or ``rootsift``) or ``delf:<preset>``.
        index: index settings.
        codebook_on_database: train on the database itself (the seed's setting).
        rerank: verification settings; ``rerank.rerank_num = 0`` disables verification.
        pca_dim: PCA-whitening of DELF descriptors to this size (learned on independent images).
        global_first: rank with the global descriptor instead of a local index.
        fuse_global: rank by the local index's score plus ``fusion_weight`` times the global
            cosine similarity.
        fusion_weight: weight of the global similarity in ``fuse_global``.
    """

    features: str
    index: IndexConfig
    codebook_on_database: bool = False
    rerank: RerankConfig = field(default_factory=lambda: RerankConfig(rerank_num=0))
    pca_dim: int | None = None
    global_first: bool = False
    fuse_global: bool = False
    fusion_weight: float = 1.0


#: Verification of DELF features: the seed's ratio test, a tolerance fit for a 16-32 px grid.
_DELF_RERANK = RerankConfig(
    rerank_num=0, ratio=0.9, ransac=RansacConfig("homography", threshold=16.0)
)


PIPELINES: dict[str, PipelineConfig] = {
    # the seed's SIFT path: 500 SIFT, tree 10^6 trained on the test database, RANSAC on 150
    "sift-voctree-seed": PipelineConfig(
        "seed",
        IndexConfig(kind="voctree", branch=10, height=6, train_per_image=None),
        codebook_on_database=True,
        rerank=RerankConfig(
            rerank_num=0, ratio=0.9, ransac=RansacConfig("homography", threshold=4.0)
        ),
    ),
    "sift-voctree": PipelineConfig("rootsift", IndexConfig(kind="voctree", branch=10, height=6)),
    "sift-he": PipelineConfig("rootsift", IndexConfig(kind="he", n_words=16384, ma=3)),
    "sift-asmk": PipelineConfig("rootsift", IndexConfig(kind="asmk", n_words=16384, ma=5)),
    # the seed's DELF path: its tree trained on the test database, RANSAC on 150
    "delf-voctree-seed": PipelineConfig(
        "delf:seed",
        IndexConfig(kind="voctree", branch=10, height=6, train_per_image=None),
        codebook_on_database=True,
        rerank=RerankConfig(
            rerank_num=0, ratio=0.9, ransac=RansacConfig("homography", threshold=4.0)
        ),
    ),
    # HOW-style: 7 scales, 128-d PCA-whitened, ASMK* with multi-assignment
    "delf-asmk": PipelineConfig(
        "delf:multiscale",
        IndexConfig(kind="asmk", n_words=16384, ma=5),
        rerank=_DELF_RERANK,
        pca_dim=128,
    ),  # fmt: skip
    "global+local": PipelineConfig(
        "delf:multiscale",
        IndexConfig(kind="asmk"),
        rerank=_DELF_RERANK,
        pca_dim=128,
        global_first=True,
    ),  # fmt: skip
    "global+asmk": PipelineConfig(
        "delf:multiscale",
        IndexConfig(kind="asmk", n_words=16384, ma=5),
        rerank=_DELF_RERANK,
        pca_dim=128,
        fuse_global=True,
    ),  # fmt: skip
    # hybrids of an ImageNet global descriptor and RootSIFT: a global shortlist verified with
    # RootSIFT, and global similarity fused with RootSIFT ASMK* scores
    # defaults chosen on the realviews training places (benchmarks/pretrained_pipelines.py):
    # shortlists of 20, 50 and 100 and weights 1, 2 and 4 tied there, so the cheapest were kept
    "global+sift-sv": PipelineConfig(
        "rootsift",
        IndexConfig(kind="asmk"),
        rerank=RerankConfig(rerank_num=20),
        global_first=True,
    ),  # fmt: skip
    "global+sift-asmk": PipelineConfig(
        "rootsift",
        IndexConfig(kind="asmk", n_words=16384, ma=5),
        fuse_global=True,
        fusion_weight=1.0,
    ),  # fmt: skip
}


__all__ = ["PIPELINES", "PipelineConfig"]
