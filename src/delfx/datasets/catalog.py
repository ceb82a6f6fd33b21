"""The catalogue of public datasets that ``delfx data download`` knows (field-facts §3).

Each dataset is a list of resources. An ``archive`` resource is extracted into the dataset's image
folder (``jpg/`` or ``ims/``) through a member map; a ``file`` resource is copied to a path in the
dataset folder. Every resource belongs to a *part* (``images``, ``gnd``, ``list``, ``db``) so that
one part can be fetched alone.

No checksums are published for any of these files; the download stage records its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from delfx.errors import DelfxError
from delfx.io.archives import MemberMap, flatten_images, keep_last_components

OXFORD_IMAGES = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
PARIS_IMAGES = (
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
)
REVISITOP_GND = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl"
OLD_GND = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/{name}/gnd_{name}.pkl"
R1M_BASE = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
R1M_ARCHIVES = 100
SFM_BASE = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train"

#: The parts a resource can belong to.
PARTS = ("images", "gnd", "list", "db")


@dataclass(frozen=True)
class Resource:
    """One file to download.

    Attributes:
        url: the catalogue URL (a mirror may replace its scheme and host).
        kind: ``"archive"`` (extracted into ``dest``) or ``"file"`` (placed at ``dest``).
        part: which part of the dataset it belongs to (one of :data:`PARTS`).
        dest: for an archive, the folder (relative to the dataset folder) its files go into; for a
            file, its path relative to the dataset folder.
        member_map: for an archive, maps a member path to a path relative to ``dest`` (or None).
    """

    url: str
    kind: str
    part: str
    dest: str
    member_map: MemberMap | None = field(default=None, compare=False, repr=False)

    @property
    def url_path(self) -> str:
        """The URL's path (``/revisitop/data/...``): the key of downloads and checksums."""
        return urlsplit(self.url).path

    @property
    def file_name(self) -> str:
        """The last component of the URL path."""
        return self.url_path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset.

    Attributes:
        name: the dataset name and folder name under the datasets root.
        description: one line for listings.
        resources: the files that make up the dataset.
        image_dir: the folder (relative to the dataset folder) that the archives fill.
        gnd_file: the ground-truth file name, or None for sets without one.
        shares_images_with: a dataset with the same images; when its image folder is complete,
            this one links to it instead of extracting again.
    """

    name: str
    description: str
    resources: tuple[Resource, ...]
    image_dir: str = "jpg"
    gnd_file: str | None = None
    shares_images_with: str | None = None

    @property
    def archives(self) -> tuple[Resource, ...]:
        """The archive resources, in catalogue order."""
        return tuple(r for r in self.resources if r.kind == "archive")

    @property
    def files(self) -> tuple[Resource, ...]:
        """The single-file resources, in catalogue order."""
        return tuple(r for r in self.resources if r.kind == "file")

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this dataset has, in :data:`PARTS` order."""
        have = {r.part for r in self.resources}
        return tuple(p for p in PARTS if p in have)


def _landmarks(
    name: str, description: str, image_urls: tuple[str, ...], gnd_url: str, sibling: str
) -> DatasetSpec:
    flatten = flatten_images((".jpg",))
    images = tuple(Resource(u, "archive", "images", "jpg", flatten) for u in image_urls)
    gnd_file = f"gnd_{name}.pkl"
    gnd = Resource(gnd_url.format(name=name), "file", "gnd", gnd_file)
    return DatasetSpec(
        name=name,
        description=description,
        resources=(*images, gnd),
        gnd_file=gnd_file,
        shares_images_with=sibling,
    )


def _build() -> dict[str, DatasetSpec]:
    specs = [
        _landmarks("roxford5k", "Revisited Oxford 5k", (OXFORD_IMAGES,), REVISITOP_GND, "oxford5k"),
        _landmarks("rparis6k", "Revisited Paris 6k", PARIS_IMAGES, REVISITOP_GND, "paris6k"),
        _landmarks("oxford5k", "Oxford 5k (old protocol)", (OXFORD_IMAGES,), OLD_GND, "roxford5k"),
        _landmarks("paris6k", "Paris 6k (old protocol)", PARIS_IMAGES, OLD_GND, "rparis6k"),
    ]
    flatten = flatten_images((".jpg",))
    r1m_archives = tuple(
        Resource(f"{R1M_BASE}/jpg/revisitop1m.{i}.tar.gz", "archive", "images", "jpg", flatten)
        for i in range(1, R1M_ARCHIVES + 1)
    )
    specs.append(
        DatasetSpec(
            name="revisitop1m",
            description="R1M distractors (~1M images, over 400 GB)",
            resources=(
                *r1m_archives,
                Resource(f"{R1M_BASE}/revisitop1m.txt", "file", "list", "revisitop1m.txt"),
            ),
        )
    )
    specs.append(
        DatasetSpec(
            name="retrieval-SfM-120k",
            description="retrieval-SfM-120k training set (tens of GB)",
            resources=(
                Resource(
                    f"{SFM_BASE}/ims/ims.tar.gz",
                    "archive",
                    "images",
                    "ims",
                    keep_last_components(4),
                ),
                Resource(
                    f"{SFM_BASE}/dbs/retrieval-SfM-120k.pkl", "file", "db", "retrieval-SfM-120k.pkl"
                ),
                Resource(
                    f"{SFM_BASE}/dbs/retrieval-SfM-120k-whiten.pkl",
                    "file",
                    "db",
                    "retrieval-SfM-120k-whiten.pkl",
                ),
            ),
            image_dir="ims",
        )
    )
    return {s.name: s for s in specs}


#: Every dataset the download stage knows, by name.
CATALOG: dict[str, DatasetSpec] = _build()


def dataset_names() -> list[str]:
    """The catalogue's dataset names, in catalogue order."""
    return list(CATALOG)


def get_spec(name: str) -> DatasetSpec:
    """The catalogue entry of ``name``.

    Raises:
        DelfxError: unknown name; the message lists the valid names.
    """
    try:
        return CATALOG[name]
    except KeyError:
        raise DelfxError(
            f"unknown dataset '{name}'; choose from: {', '.join(dataset_names())}"
        ) from None
