"""CUHK-PEDES-format datasets, image-only extra sources, the identity-balanced sampler and augmentation.

Annotation formats read by `read_annotations` (one JSON list of records each):

| dataset | file | image key | splits |
|---|---|---|---|
| CUHK-PEDES | `reid_raw.json` | `file_path` | train / val / test |
| ICFG-PEDES | `ICFG-PDES.json` | `file_path` | train / test |
| RSTPReid | `data_captions.json` | `img_path` | train / val / test |

Every record also has `id` (the person), `captions` (a list of strings) and `split`; other keys are
ignored. Image paths are relative to an image root given separately. Identities are relabelled to
0..N-1 per split, in order of first appearance, because a classifier needs contiguous labels and the
raw ids of a split need not be contiguous.

Image-only sources (`read_extra_images`) are CSV files with a `file_path` column and a person column
(`person` or `cuhk01_person`). Rows that name a CUHK-PEDES split in `pedes_split` are skipped, so
evaluation identities never leak into training.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.errors import ModelError

logger = logging.getLogger(__name__)

IMAGE_PATH_KEYS = ("file_path", "img_path")
PERSON_COLUMNS = ("person", "cuhk01_person", "pid", "id")
CAMERA_COLUMNS = ("camera_id", "camera_view_conventional", "camera")

# CUHK01 crops are named PPPPIII (person, image index); images 001-002 come from camera A, 003-004 from B.
_CUHK01_NAME = re.compile(r"(?:^|/)CUHK01/(\d{4})(\d{3})\.\w+$")
# RSTPReid and Market-1501-style names carry the camera as `_cN`: 0_c14_0010.jpg.
_CAMERA_IN_NAME = re.compile(r"_c(\d+)(?:s\d+)?_")


class DatasetError(ModelError):
    """Raised when an annotation file, an extra-image CSV or an image it names is invalid or missing."""


@dataclass(frozen=True)
class PersonImage:
    """One crop of a split: its file, its relabelled identity and the captions written for it."""

    path: Path
    label: int
    person_id: str
    camera_id: str | None
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Caption:
    """One description: a text query for the person `label`, written for image `image_index`."""

    text: str
    label: int
    image_index: int


@dataclass(frozen=True)
class PedesSplit:
    """The images and captions of one split, with identities relabelled to 0..N-1.

    `person_ids[label]` is the raw id of the annotation file (or of the CSV) for that label.
    """

    name: str
    images: tuple[PersonImage, ...]
    captions: tuple[Caption, ...]
    person_ids: tuple[str, ...]

    @property
    def num_identities(self) -> int:
        return len(self.person_ids)

    @property
    def labels(self) -> list[int]:
        return [image.label for image in self.images]


# --- annotation records ----------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotationRecord:
    """One validated record of an annotation file, before relabelling."""

    index: int
    person_id: str
    file_path: str
    captions: tuple[str, ...]
    split: str


def infer_camera_id(file_path: str) -> str | None:
    """Return the camera encoded in a crop's file name, or None when the name carries none.

    CUHK01 crops (`CUHK01/PPPPIII.png`): images 001-002 are camera `A`, 003-004 camera `B`.
    Market-1501 and RSTPReid names (`0_c14_0010.jpg`): camera `c14`.
    """
    normalised = file_path.replace("\\", "/")
    cuhk01 = _CUHK01_NAME.search(normalised)
    if cuhk01 is not None:
        return "A" if int(cuhk01.group(2)) <= 2 else "B"
    camera = _CAMERA_IN_NAME.search(Path(normalised).name)
    if camera is not None:
        return f"c{int(camera.group(1))}"
    return None


def _record_error(path: Path, index: int, record: Any, message: str) -> DatasetError:
    person = record.get("id") if isinstance(record, dict) else None
    where = f"record {index}" + (f" (id {person!r})" if person is not None else "")
    return DatasetError(f"{path}: {where}: {message}")


def _parse_record(path: Path, index: int, record: Any) -> AnnotationRecord:
    """Validate one raw record, accepting the key aliases of ICFG-PEDES and RSTPReid."""
    if not isinstance(record, dict):
        raise _record_error(path, index, record, f"expected an object, got {type(record).__name__}")

    person = record.get("id")
    if isinstance(person, bool) or not isinstance(person, int | str) or person == "":
        raise _record_error(path, index, record, f"field 'id' must be an integer or a string, got {person!r}")

    image_key = next((key for key in IMAGE_PATH_KEYS if key in record), None)
    if image_key is None:
        raise _record_error(path, index, record, f"missing the image path: expected one of {IMAGE_PATH_KEYS}")
    file_path = record[image_key]
    if not isinstance(file_path, str) or not file_path.strip():
        raise _record_error(
            path, index, record, f"field {image_key!r} must be a non-empty path string, got {file_path!r}"
        )

    captions = record.get("captions")
    if isinstance(captions, str) and captions.strip():
        captions = [captions]  # a single caption written as a plain string
    if not isinstance(captions, list) or not captions:
        raise _record_error(
            path, index, record, f"field 'captions' must be a non-empty list of strings, got {captions!r}"
        )
    for position, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise _record_error(
                path, index, record, f"captions[{position}] must be a non-empty string, got {caption!r}"
            )

    split = record.get("split")
    if not isinstance(split, str) or not split:
        raise _record_error(
            path, index, record, f"field 'split' must be a string such as 'train', got {split!r}"
        )

    return AnnotationRecord(
        index=index,
        person_id=str(person),
        file_path=file_path.strip(),
        captions=tuple(caption.strip() for caption in captions),
        split=split,
    )


def read_annotations(path: str | Path) -> list[AnnotationRecord]:
    """Read and validate every record of a CUHK-PEDES, ICFG-PEDES or RSTPReid annotation file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}; pass the reid_raw.json of the dataset")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotation file {path} is not valid UTF-8 JSON: {e}") from e
    if not isinstance(raw, list):
        raise DatasetError(
            f"annotation file {path} must contain a JSON list of records, got {type(raw).__name__}"
        )
    return [_parse_record(path, index, record) for index, record in enumerate(raw)]


def available_splits(records: Sequence[AnnotationRecord]) -> list[str]:
    """Return the split names of `records` in order of first appearance."""
    return list(dict.fromkeys(record.split for record in records))


def load_split(
    annotations: str | Path,
    images_root: str | Path,
    *,
    split: str,
    records: Sequence[AnnotationRecord] | None = None,
) -> PedesSplit:
    """Load one split: check that every image exists and relabel its identities to 0..N-1.

    `records` skips re-reading the file when the caller already has them from `read_annotations`.
    """
    annotations = Path(annotations)
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise DatasetError(f"image root not found: {images_root}; pass the folder the file paths start from")
    if records is None:
        records = read_annotations(annotations)
    selected = [record for record in records if record.split == split]
    if not selected:
        raise DatasetError(
            f"{annotations}: no record has split {split!r}; the file has splits {available_splits(records)}"
        )

    labels: dict[str, int] = {}
    images: list[PersonImage] = []
    captions: list[Caption] = []
    for record in selected:
        image_path = images_root / record.file_path
        if not image_path.is_file():
            raise DatasetError(
                f"{annotations}: record {record.index} (id {record.person_id!r}): image not found: {image_path}; "
                f"check that --images points at the folder the 'file_path' values are relative to"
            )
        label = labels.setdefault(record.person_id, len(labels))
        image_index = len(images)
        images.append(
            PersonImage(
                path=image_path,
                label=label,
                person_id=record.person_id,
                camera_id=infer_camera_id(record.file_path),
                captions=record.captions,
            )
        )
        captions.extend(Caption(text=text, label=label, image_index=image_index) for text in record.captions)

    logger.info(
        "loaded split %s of %s: %d identities, %d images, %d captions",
        split,
        annotations.name,
        len(labels),
        len(images),
        len(captions),
    )
    return PedesSplit(name=split, images=tuple(images), captions=tuple(captions), person_ids=tuple(labels))


# --- image-only sources ----------------------------------------------------------------------


def _first_column(fieldnames: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in fieldnames), None)


def _resolve_image_root(csv_path: Path, first_file: str, fallback_root: Path | None) -> Path:
    """Pick the folder the CSV's paths are relative to: the CSV's folder or `fallback_root`."""
    candidates = [csv_path.parent] + ([fallback_root] if fallback_root is not None else [])
    for root in candidates:
        if (root / first_file).is_file():
            return root
    tried = ", ".join(str(root / first_file) for root in candidates)
    raise DatasetError(
        f"{csv_path}: first image not found (tried {tried}); file paths must be relative to the CSV's "
        f"folder or to the --images root"
    )


def read_extra_images(
    csv_path: str | Path,
    *,
    images_root: str | Path | None = None,
    first_label: int = 0,
    name: str | None = None,
) -> PedesSplit:
    """Read an image-only source: a CSV with `file_path` and a person column, no captions.

    Rows with a non-empty `pedes_split` belong to captioned CUHK-PEDES identities (train or
    evaluation) and are skipped. Labels start at `first_label`, so the identities of this source
    follow those of the captioned training split in one classifier.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"extra-image CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames or []
        rows = list(reader)

    person_column = _first_column(fieldnames, PERSON_COLUMNS)
    if "file_path" not in fieldnames or person_column is None:
        raise DatasetError(
            f"{csv_path}: expected a 'file_path' column and a person column (one of {PERSON_COLUMNS}), "
            f"got columns {fieldnames}"
        )
    camera_column = _first_column(fieldnames, CAMERA_COLUMNS)
    kept = [row for row in rows if not (row.get("pedes_split") or "").strip()]
    if not kept:
        raise DatasetError(f"{csv_path}: no row without a CUHK-PEDES split; nothing to train on")

    root = _resolve_image_root(csv_path, kept[0]["file_path"], Path(images_root) if images_root else None)
    labels: dict[str, int] = {}
    images: list[PersonImage] = []
    for line, row in enumerate(kept, start=2):
        file_path, person = (row.get("file_path") or "").strip(), (row.get(person_column) or "").strip()
        if not file_path or not person:
            raise DatasetError(f"{csv_path}: row {line}: empty 'file_path' or {person_column!r}")
        image_path = root / file_path
        if not image_path.is_file():
            raise DatasetError(f"{csv_path}: row {line}: image not found: {image_path}")
        camera = (row.get(camera_column) or "").strip() if camera_column else ""
        label = labels.setdefault(person, first_label + len(labels))
        images.append(
            PersonImage(
                path=image_path,
                label=label,
                person_id=person,
                camera_id=camera or infer_camera_id(file_path),
                captions=(),
            )
        )

    logger.info(
        "loaded image-only source %s: %d identities, %d images (%d rows with a CUHK-PEDES split skipped)",
        csv_path.name,
        len(labels),
        len(images),
        len(rows) - len(kept),
    )
    return PedesSplit(name=name or csv_path.stem, images=tuple(images), captions=(), person_ids=tuple(labels))


# --- image->image protocol -------------------------------------------------------------------


def camera_query_gallery(split: PedesSplit) -> tuple[list[int], list[int]]:
    """Split image indices into camera-A queries and camera-B gallery (the CUHK01 convention).

    Returns two empty lists when the split has no images from both cameras A and B.
    """
    queries = [i for i, image in enumerate(split.images) if image.camera_id == "A"]
    gallery = [i for i, image in enumerate(split.images) if image.camera_id == "B"]
    if not queries or not gallery:
        return [], []
    return queries, gallery


# --- sampler ---------------------------------------------------------------------------------


class IdentityBalancedSampler:
    """Batches of P identities × K images, reshuffled each epoch from `seed` and the epoch number.

    Each identity's images are shuffled and cut into groups of K; an identity with fewer than K
    images is padded by drawing its own images again. Batches take P groups of distinct identities
    until fewer than P identities have groups left. Under data parallelism every rank builds the
    same batch list and takes every `world_size`-th batch, so ranks see disjoint batches and the
    same number of them.
    """

    def __init__(
        self,
        labels: Sequence[int],
        *,
        identities_per_batch: int,
        images_per_identity: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if identities_per_batch < 2 or images_per_identity < 1:
            raise DatasetError(
                f"identity-balanced batches need P >= 2 identities and K >= 1 images, "
                f"got P={identities_per_batch}, K={images_per_identity}"
            )
        if not 0 <= rank < world_size:
            raise DatasetError(f"rank {rank} is outside world size {world_size}")
        self.identities_per_batch = identities_per_batch
        self.images_per_identity = images_per_identity
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

        by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_label[int(label)].append(index)
        self.index_by_label = dict(by_label)
        if len(self.index_by_label) < identities_per_batch:
            raise DatasetError(
                f"{len(self.index_by_label)} identities cannot fill batches of P={identities_per_batch} "
                f"identities; lower identities_per_batch"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch`; call before iterating, as with DistributedSampler."""
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        k = self.images_per_identity
        groups: dict[int, list[list[int]]] = {}
        for label in sorted(self.index_by_label):
            indices = list(self.index_by_label[label])
            if len(indices) < k:
                indices += rng.choices(indices, k=k - len(indices))
            rng.shuffle(indices)
            usable = len(indices) // k * k
            groups[label] = [indices[i : i + k] for i in range(0, usable, k)]

        batches: list[list[int]] = []
        available = sorted(groups)
        while len(available) >= self.identities_per_batch:
            chosen = rng.sample(available, self.identities_per_batch)
            batch: list[int] = []
            for label in chosen:
                batch.extend(groups[label].pop())
                if not groups[label]:
                    available.remove(label)
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        per_rank = len(batches) // self.world_size
        yield from batches[self.rank : per_rank * self.world_size : self.world_size]

    def __len__(self) -> int:
        return len(self._all_batches()) // self.world_size


# --- augmentation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation on normalised image tensors.

    No colour jitter: captions name colours ("a red coat"), so changing hues would teach the
    network to ignore the words that identify people best.
    """

    flip_probability: float = 0.5
    # Zero padding on each side (pixels of the resized input) before a random crop back to size.
    pad: int = 10
    erase_probability: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: tuple[float, float] = (0.3, 3.3)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply flip, pad + random crop and random erasing to a normalised (B, 3, H, W) batch.

    Padding and erasing fill with 0, which in normalised space is the mean colour of the input
    normalisation.
    NOTE: a flip makes captions that name a side ("bag on his right shoulder") wrong for that
    image. Flipping is kept on the assumption, not measured here, that such captions are too few to
    outweigh the extra variety.
    """
    batch, _, height, width = images.shape
    out = images.clone()
    uniform = torch.rand(batch, 3, generator=generator).tolist()

    for i in range(batch):
        flip_draw, erase_draw, _ = uniform[i]
        image = out[i]
        if flip_draw < config.flip_probability:
            image = image.flip(-1)
        if config.pad > 0:
            padded = torch.nn.functional.pad(image, (config.pad,) * 4)
            top = int(torch.randint(0, 2 * config.pad + 1, (1,), generator=generator))
            left = int(torch.randint(0, 2 * config.pad + 1, (1,), generator=generator))
            image = padded[:, top : top + height, left : left + width]
        if erase_draw < config.erase_probability:
            image = _erase_random_box(image, config, generator)
        out[i] = image
    return out


def _erase_random_box(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Zero one random box of the image, trying a few draws until a box fits (random erasing)."""
    _, height, width = image.shape
    for _ in range(10):
        draws = torch.rand(4, generator=generator).tolist()
        area = (
            height * width * (config.erase_area[0] + draws[0] * (config.erase_area[1] - config.erase_area[0]))
        )
        log_low, log_high = math.log(config.erase_aspect[0]), math.log(config.erase_aspect[1])
        aspect = math.exp(log_low + draws[1] * (log_high - log_low))
        box_height = round(math.sqrt(area * aspect))
        box_width = round(math.sqrt(area / aspect))
        if 0 < box_height < height and 0 < box_width < width:
            top = int(draws[2] * (height - box_height))
            left = int(draws[3] * (width - box_width))
            image = image.clone()
            image[:, top : top + box_height, left : left + box_width] = 0.0
            return image
    return image


def augment_feature_maps(
    features: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Apply flip and random erasing to (B, C, h, w) backbone feature maps of a frozen backbone.

    The feature-map counterpart of `augment_batch`, for training on cached features: a horizontal
    flip of the map stands in for features of the flipped image (equal up to the backbone's padding
    asymmetry), and erasing zeroes a box of cells. Pad + random crop has no counterpart at stride 16.
    """
    out = features.clone()
    draws = torch.rand(len(out), 2, generator=generator).tolist()
    for i, (flip_draw, erase_draw) in enumerate(draws):
        if flip_draw < config.flip_probability:
            out[i] = out[i].flip(-1)
        if erase_draw < config.erase_probability:
            out[i] = _erase_random_box(out[i], config, generator)
    return out
