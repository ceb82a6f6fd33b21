"""The learned parts of ``delfx run``: cached DELF features and the global shortlist.

``delf-*`` pipelines extract DELF features (:mod:`delfx.extract_delf`) with the model of
:class:`DelfOptions` into the work folder, under a name derived from every setting that changes
them; the PCA of the local descriptors, when asked for, is learned on an independent dataset (the
codebook's: ``--codebook-from ROOT:NAME`` or the Oxford <-> Paris companion), never on the test
images. ``global+local`` ranks by a global descriptor first (:mod:`delfx.run_global`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delfx.errors import InputError
from delfx.io import atomic
from delfx.io.cache_key import digest, model_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DelfOptions:
    """The network and settings behind the DELF features of a run.

    Attributes:
        model: attention checkpoint (``delfx train attention``), global checkpoint or
            architecture name (these two need ``attention="l2"``).
        pretrained: backbone weights for an architecture name.
        pooling: pooling for an architecture name.
        attention: None (the checkpoint's head), ``"learned"`` or ``"l2"``.
        block: ``last`` or ``block3`` (None: the checkpoint's own, else ``last``).
        pca_dim: reduce descriptors to this many dimensions by a PCA-whitening learned on
            independent images (None: keep them).
        settings: :class:`~delfx.features.delf.DelfConfig` overrides (e.g. ``feature_num``).
        device: torch device.
    """

    model: str = "resnet18"
    pretrained: str = "none"
    pooling: str = "gem"
    attention: str | None = "l2"
    block: str | None = None
    pca_dim: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def delf_config(preset: str, opts: DelfOptions) -> Any:
    """The :class:`~delfx.features.delf.DelfConfig` of a preset with ``opts.settings`` applied.

    Raises:
        InputError: unknown preset or setting.
    """
    from delfx.features.delf_config import PRESETS

    if preset not in PRESETS:
        raise InputError(f"DELF preset '{preset}': expected one of {', '.join(PRESETS)}")
    conf = PRESETS[preset]
    names = {f.name for f in dataclasses.fields(conf)}
    unknown = sorted(set(opts.settings) - names)
    if unknown:
        raise InputError(f"DELF setting '{unknown[0]}': expected one of {', '.join(sorted(names))}")
    settings = dict(opts.settings)
    if isinstance(settings.get("scales"), list | str):
        raw = settings["scales"]
        items = raw.split(",") if isinstance(raw, str) else raw
        settings["scales"] = tuple(float(s) for s in items)
    return dataclasses.replace(conf, **settings)


def delf_features(
    opts: DelfOptions,
    preset: str,
    root: Path,
    name: str,
    work: Path,
    *,
    pca_from: str | None,
    progress: bool,
) -> Path:
    """Extract (or reuse) the DELF features of dataset ``name``; returns the feature file.

    Args:
        pca_from: ``ROOT:NAME`` of independent images for the PCA (needed when
            ``opts.pca_dim`` is set; without it the descriptors are kept as they are).
    """
    from delfx import extract_delf

    conf = delf_config(preset, opts)
    if opts.pca_dim is not None and pca_from is None:
        logger.warning(
            "no independent images for the DELF PCA (give --codebook-from ROOT:NAME); "
            "descriptors are not reduced"
        )
    pca_dim = opts.pca_dim if pca_from is not None else None
    model_key = [
        model_id(opts.model), model_id(opts.pretrained), opts.pooling, opts.attention, opts.block,
        dataclasses.asdict(conf),
    ]  # fmt: skip
    pca_file = None
    if pca_dim is not None:
        pca_file = work / f"pca-delf-{digest([*model_key, pca_dim, pca_from])}.npz"
    key = digest([*model_key, pca_dim, pca_from if pca_dim else None])
    out = work / f"features-delf-{preset}-{name}-{key}.h5"
    done = out.with_suffix(".done")
    if done.is_file() and out.is_file():
        return out
    # the PCA's own training set (an independent dataset, e.g. for the codebook) reuses the PCA
    own = pca_from is not None and _same_dataset(pca_from, root, name)
    if own and (pca_file is None or not pca_file.is_file()):
        raise InputError(
            f"{name}: its DELF PCA must be learned first (extract the test dataset before it)"
        )
    extract_delf.main(
        conf,
        out,
        root=root,
        dataset=name,
        model=opts.model,
        pretrained=opts.pretrained,
        attention=opts.attention,
        block=opts.block,
        device=opts.device,
        pca=pca_file,
        pca_dim=pca_dim,
        pca_from=None if own else pca_from,
        pca_training_set=own,
        progress=progress,
    )
    atomic.write_text(done, "complete\n")
    return out


def _same_dataset(spec: str, root: Path, name: str) -> bool:
    other_root, other = spec.rsplit(":", 1)
    return other == name and Path(other_root).resolve() == Path(root).resolve()
