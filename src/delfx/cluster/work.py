"""What a worker does with one shard: extract its photos, or index its postings.

A *work* is a small frozen dataclass (it travels to Ray actors by value); ``work.open(device)``
builds its *runner* once per worker, loading the model there, and ``runner.run(shard, plan,
report)`` does one shard, calling ``report(k)`` as images complete. Extraction writes the
shard's feature file (resumed when a killed worker left it), its global descriptors when the
engine has them, and last its done marker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delfx.cluster import plan as shard_plan
from delfx.cluster.plan import Shard
from delfx.extract import Job, _results, write_store
from delfx.features.sift import SiftConfig
from delfx.features.types import LocalFeatures

logger = logging.getLogger(__name__)

Report = Callable[[int], None]
Result = tuple[str, LocalFeatures, dict[str, Any]]


def _counted(results: Iterable[Result], report: Report) -> Iterator[Result]:
    for item in results:
        yield item
        report(1)  # after the writer stored it


def _drop_unreadable(path: Path) -> None:
    """Delete a shard file a killed worker left unreadable (killed while HDF5 created it); a
    readable one is resumed. Only shard files, which the plan owns, are ever deleted."""
    if not path.is_file():
        return
    from delfx.errors import InputError
    from delfx.io.featurestore import FeatureReader

    try:
        with FeatureReader(path):
            return
    except InputError as exc:
        logger.warning("%s: unreadable (%s); extracting this shard again", path, exc)
        path.unlink()


def _extract_shard(
    shard: Shard,
    plan: Mapping[str, Any],
    report: Report,
    config: dict[str, Any],
    results: Callable[[list[Job]], Iterable[Result]],
    half: bool,
    vectors: Callable[[Sequence[Job]], Any] | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    _drop_unreadable(shard.features)
    write_store(
        shard.features,
        config,
        shard.jobs,
        lambda todo: _counted(results(todo), report),
        label=f"shard {shard.index}",
        source=f"shard {shard.index}",
        progress=False,
        half=half,
    )
    if vectors is not None:
        assert shard.vectors is not None
        from delfx.engine.vectors import write_vectors

        write_vectors(shard.vectors, shard.names, vectors(shard.jobs))
    seconds = time.perf_counter() - start
    worker = shard_plan.worker_name()
    shard_plan.mark_done(shard, plan, worker, seconds)
    return {"shard": shard.index, "images": len(shard.jobs), "seconds": seconds, "worker": worker}


@dataclass(frozen=True)
class SiftWork:
    """SIFT features of a shard's photos (``delfx extract sift``, ``delfx run``).

    Attributes:
        sift: the extractor settings.
        config: the feature file's config (as the single-file run writes it).
        half: store descriptors as float16.
        processes: extraction processes inside one worker (1 on Ray: one actor per core).
    """

    sift: SiftConfig
    config: dict[str, Any] = field(hash=False)
    half: bool = False
    processes: int = 1
    resumable = True

    def open(self, device: str = "cpu") -> _SiftRunner:
        """The runner of one worker."""
        return _SiftRunner(self)


class _SiftRunner:
    def __init__(self, work: SiftWork) -> None:
        self.work = work

    def run(self, shard: Shard, plan: Mapping[str, Any], report: Report) -> dict[str, Any]:
        w = self.work
        n = max(1, min(w.processes, len(shard.jobs) // 4 or 1))
        return _extract_shard(
            shard, plan, report, w.config, lambda todo: _results(todo, w.sift, n), w.half
        )


@dataclass(frozen=True)
class EngineWork:
    """A collection's photos: local features and, for a hybrid spec, global descriptors.

    Attributes:
        spec: the engine's spec as a dict (:meth:`~delfx.engine.spec.EngineSpec.to_dict`).
        processes: SIFT processes inside one worker.
    """

    spec: dict[str, Any] = field(hash=False)
    processes: int = 1
    resumable = True

    def open(self, device: str = "cpu") -> _EngineRunner:
        """The runner of one worker; it holds the engine's extractor (and its network)."""
        return _EngineRunner(self, device)


class _EngineRunner:
    def __init__(self, work: EngineWork, device: str) -> None:
        from delfx.engine.extractor import Extractor
        from delfx.engine.spec import from_dict

        self.work = work
        self.extractor = Extractor(from_dict(work.spec, "spec"), device)
        if self.extractor.spec.uses_global:
            self.extractor.network()  # load the model once per worker, before the first shard

    def run(self, shard: Shard, plan: Mapping[str, Any], report: Report) -> dict[str, Any]:
        from delfx.engine.vectors import describe_jobs

        ex = self.extractor
        n = max(1, min(self.work.processes, len(shard.jobs) // 4 or 1))
        vectors = None
        if ex.spec.uses_global:

            def vectors(jobs: Sequence[Job]) -> Any:
                return describe_jobs(ex, jobs, progress=False)

        return _extract_shard(
            shard, plan, report, ex.store_config, lambda todo: _results(todo, ex.sift, n), False,
            vectors,
        )  # fmt: skip


@dataclass(frozen=True)
class IndexWork:
    """The postings of a shard's images, written as segments of an index folder.

    Image ids continue from the shard's ``first_id``, so the driver lists the segments of all
    shards, in shard order, as one index.

    Attributes:
        index_dir: the index folder (holds the trained model).
        model: the model file's name in it.
        meta_empty: the empty index's meta (:func:`delfx.index.local.state_of`).
        batch_images: images per segment.
        allow_empty: index images without features as images that never match.
    """

    index_dir: Path
    model: str
    meta_empty: dict[str, Any] = field(hash=False)
    batch_images: int = 2000
    allow_empty: bool = True
    resumable = False

    def open(self, device: str = "cpu") -> _IndexRunner:
        """The runner of one worker; it holds the trained model."""
        return _IndexRunner(self)


class _IndexRunner:
    def __init__(self, work: IndexWork) -> None:
        from delfx.index.storage import IndexDir

        self.work = work
        self.store = IndexDir(work.index_dir)
        self.arrays = self.store.read_model(work.model)

    def run(self, shard: Shard, plan: Mapping[str, Any], report: Report) -> dict[str, Any]:
        from delfx.build_index import add_batches
        from delfx.index import local
        from delfx.io.featureset import FeatureSet

        start = time.perf_counter()
        index = local.restore(self.work.meta_empty, self.arrays, [], shard.first_id)
        with FeatureSet([shard.features]) as feats:
            _, segments = add_batches(
                index,
                self.store,
                feats,
                shard.names,
                batch_images=self.work.batch_images,
                allow_empty=self.work.allow_empty,
                progress=False,
            )
        report(len(shard.jobs))
        return {
            "shard": shard.index,
            "segments": segments,
            "seconds": time.perf_counter() - start,
            "worker": shard_plan.worker_name(),
        }


@dataclass(frozen=True)
class DelfWork:
    """DELF features of a shard's photos (``delfx extract delf``): each worker loads the
    attention network once (seeded as :func:`delfx.extract_delf.load_network` does) and applies
    the PCA the driver learned or read.

    Attributes:
        conf: the DELF settings.
        config: the feature file's config (as the single-file run writes it).
        model: checkpoint or architecture; ``pretrained``, ``attention``, ``block`` as for
            :func:`~delfx.extract_delf.load_network`.
        pca: the :class:`~delfx.features.local_pca.LocalPCA` to apply, or None.
    """

    conf: Any
    config: dict[str, Any] = field(hash=False)
    model: str = ""
    pretrained: str = "none"
    attention: str | None = None
    block: str | None = None
    pca: Any = field(default=None, hash=False)
    resumable = True

    def open(self, device: str = "cpu") -> _DelfRunner:
        """The runner of one worker; it holds the network."""
        return _DelfRunner(self, device)


class _DelfRunner:
    def __init__(self, work: DelfWork, device: str) -> None:
        from delfx.extract_delf import load_network

        self.work, self.device = work, device
        self.net, _ = load_network(
            work.model,
            pretrained=work.pretrained,
            attention=work.attention,
            block=work.block,
            device=device,
        )

    def run(self, shard: Shard, plan: Mapping[str, Any], report: Report) -> dict[str, Any]:
        from delfx.extract_delf import _features

        w = self.work

        def results(todo: list[Job]) -> Iterable[Result]:
            return _features(self.net, w.conf, todo, self.device, w.pca)

        return _extract_shard(shard, plan, report, w.config, results, False)
