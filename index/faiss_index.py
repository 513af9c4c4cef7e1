"""The FAISS structure behind the gallery: int64 labels, inner-product search, training and tombstones.

Three families of `faiss.index_factory` specs are supported, each with `METRIC_INNER_PRODUCT`:

- exact (`"Flat"`): an `IndexFlat` inside `IndexIDMap`.
- HNSW (`"HNSW32"`, `"HNSW32,SQ8"`): inside `IndexIDMap`.

In both, a delete records a tombstone, which searches exclude through an `IDSelector`. HNSW graphs
cannot remove vectors at all, and removing from `IndexFlat` moves every later vector (about 0.25 s
per call at 200k 512-d vectors on a loaded 2-core machine). The store compacts once tombstones exceed
a configured fraction: `compact` removes them from a flat index in one pass, and an HNSW graph is
rebuilt from SQLite.
- IVF (`"IVF1024,Flat"`, `"IVF256,PQ32"`): labels are stored natively and deletes remove vectors from
  their inverted lists at once.

Specs that need training (IVF, and quantisers such as SQ8 or PQ) get an exact index until the gallery
contains `training_threshold` embeddings. Other index types (PreTransform wrappers such as OPQ or PCA, bare
PQ, LSH) are rejected because they cannot store int64 labels and remove them reliably.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.files import replace_durably, sha256_of_file
from index.store import InvalidConfigError

logger = logging.getLogger(__name__)

# Backend name recorded in manifests and `Manifest.backend`.
BACKEND = "faiss"
EXACT_SPEC = "Flat"
# faiss's k-means warns when it gets fewer than 39 training points per centroid; train only above that.
MIN_TRAIN_POINTS_PER_CENTROID = 39
# Centroids of the 8-bit codebooks that SQ and PQ quantisers train.
QUANTISER_CENTROIDS = 256
# k-means subsamples to 256 points per centroid (faiss's max_points_per_centroid), so more is wasted.
MAX_TRAIN_POINTS_PER_CENTROID = 256
# Upper bound of the HNSW candidate list when a selective filter widens the search. Past it the exact
# re-ranking, which fills short results anyway, is expected to be as cheap.
# NOTE: a guessed bound; it was not tuned by measurement.
MAX_FILTERED_EF_SEARCH = 4096

# (labels (N,) int64, embeddings (N, D) float32) chunks.
LabelledChunks = Iterable[tuple[np.ndarray, np.ndarray]]


class IndexFileError(Exception):
    """Raised when `index.faiss` is unreadable or does not hold the structure the manifest records."""


class IndexKind(enum.Enum):
    FLAT = "flat"
    HNSW = "hnsw"
    IVF = "ivf"


@dataclass(frozen=True)
class SearchTuning:
    """Per-search effort: IVF lists probed and the HNSW candidate list size (raised to k when smaller)."""

    ivf_nprobe: int = 32
    hnsw_ef_search: int = 128


@dataclass(frozen=True)
class SpecInfo:
    """Family of an index spec and the number of embeddings it needs before training (0: none)."""

    spec: str
    kind: IndexKind
    training_threshold: int


def inspect_spec(spec: str, dim: int) -> SpecInfo:
    """Build `spec` empty to learn its family; raise `InvalidConfigError` for unsupported specs."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidConfigError(f"index spec must be a non-empty faiss.index_factory string, got {spec!r}")
    if "IDMap" in spec:
        raise InvalidConfigError(
            f"index spec {spec!r} names IDMap; the store adds id mapping itself, drop it"
        )
    try:
        probe = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().rsplit(": ", 1)[-1]  # drop faiss's C++ function name and source location
        raise InvalidConfigError(
            f"index spec {spec!r} cannot be built by faiss.index_factory for {dim}-d inner-product search "
            f'({reason}); use an exact ("Flat"), HNSW ("HNSW32") or IVF ("IVF1024,Flat") spec'
        ) from e
    kind = _kind_of(probe)
    if kind is None:
        raise InvalidConfigError(
            f"index spec {spec!r} cannot be used: it builds {type(probe).__name__}, which does not store and "
            "remove int64 ids; "
            'use an exact ("Flat"), HNSW ("HNSW32") or IVF ("IVF1024,Flat") spec'
        )
    threshold = 0
    if kind is IndexKind.IVF:
        threshold = MIN_TRAIN_POINTS_PER_CENTROID * faiss.extract_index_ivf(probe).nlist
    elif not probe.is_trained:
        threshold = MIN_TRAIN_POINTS_PER_CENTROID * QUANTISER_CENTROIDS
    return SpecInfo(spec=spec, kind=kind, training_threshold=threshold)


def _kind_of(index: faiss.Index) -> IndexKind | None:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        return IndexKind.IVF
    if isinstance(index, faiss.IndexHNSW):
        return IndexKind.HNSW
    if type(index) in (faiss.IndexFlat, faiss.IndexFlatIP):
        return IndexKind.FLAT
    return None


class FaissIndex:
    """A FAISS index over gallery labels (int64, unique, never reused), with tombstones unless it is IVF.

    Not thread-safe: the store guards it with a readers-writer lock (search under read, changes under write).
    """

    def __init__(self, info: SpecInfo, dim: int, index: faiss.Index, built_spec: str) -> None:
        self.info = info
        self.dim = dim
        self.index = index
        self.built_spec = built_spec
        self.tombstones = np.empty(0, dtype=np.int64)
        self._tombstone_selector: tuple[faiss.IDSelector, ...] | None = None

    @property
    def is_exact_fallback(self) -> bool:
        """Whether the structure is the exact stand-in for a spec that still waits for training."""
        return self.built_spec != self.info.spec

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live_count(self) -> int:
        return self.ntotal - int(self.tombstones.size)

    @property
    def uses_tombstones(self) -> bool:
        """Whether deletes are recorded as tombstones (exact and HNSW) instead of removed (IVF)."""
        return isinstance(self.index, faiss.IndexIDMap)

    @property
    def tombstone_fraction(self) -> float:
        return self.tombstones.size / self.ntotal if self.ntotal else 0.0

    @classmethod
    def build(
        cls,
        info: SpecInfo,
        dim: int,
        *,
        count: int,
        chunks: Callable[[], LabelledChunks],
        train_sample: Callable[[int], np.ndarray],
    ) -> FaissIndex:
        """Build an index of `count` embeddings: train when the spec needs it and enough exist, then add.

        `chunks()` yields every (labels, embeddings) chunk; `train_sample(n)` returns n embeddings.
        """
        started = time.perf_counter()
        if info.training_threshold and count < info.training_threshold:
            built = cls(info, dim, _new_structure(EXACT_SPEC, IndexKind.FLAT, dim), EXACT_SPEC)
        else:
            built = cls(info, dim, _new_structure(info.spec, info.kind, dim), info.spec)
            if info.training_threshold:
                built._train(train_sample(min(count, built._max_train_points())))
        for labels, vectors in chunks():
            built.add(labels, vectors)
        logger.debug(
            "built %s index of %d embeddings in %.2f s",
            built.built_spec,
            built.ntotal,
            time.perf_counter() - started,
        )
        return built

    def _max_train_points(self) -> int:
        if self.info.kind is IndexKind.IVF:
            return MAX_TRAIN_POINTS_PER_CENTROID * faiss.extract_index_ivf(self.index).nlist
        return MAX_TRAIN_POINTS_PER_CENTROID * QUANTISER_CENTROIDS

    def _train(self, sample: np.ndarray) -> None:
        started = time.perf_counter()
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))
        logger.info(
            "trained %s on %d embeddings in %.1f s",
            self.built_spec,
            len(sample),
            time.perf_counter() - started,
        )

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if labels.size:
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.int64)
            )

    def remove(self, labels: np.ndarray) -> None:
        """Remove labels from search: as tombstones, or from the inverted lists of an IVF index."""
        if not labels.size:
            return
        if self.uses_tombstones:
            self._set_tombstones(np.union1d(self.tombstones, labels.astype(np.int64)))
            return
        self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64)))

    def compact(self) -> bool:
        """Remove the tombstones of an exact index in one pass; return False for HNSW, which must be rebuilt."""
        if self.built_spec != EXACT_SPEC:
            return False
        if self.tombstones.size:
            self.index.remove_ids(faiss.IDSelectorBatch(self.tombstones))
            self._set_tombstones(np.empty(0, dtype=np.int64))
        return True

    def _set_tombstones(self, tombstones: np.ndarray) -> None:
        self.tombstones = tombstones
        self._tombstone_selector = None
        if tombstones.size:
            inner = faiss.IDSelectorBatch(tombstones)
            self._tombstone_selector = (faiss.IDSelectorNot(inner), inner)

    def labels(self) -> np.ndarray:
        """Return every label in the structure (tombstones included), unsorted."""
        if isinstance(self.index, faiss.IndexIDMap):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = faiss.extract_index_ivf(self.index).invlists
        parts = [np.empty(0, dtype=np.int64)]
        for list_no in range(lists.nlist):
            size = lists.list_size(list_no)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).astype(np.int64))
        return np.concatenate(parts)

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None, tuning: SearchTuning
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return per query (labels, scores), best first, with FAISS's -1 padding removed.

        `allowed` restricts results to those labels; tombstones are always excluded.
        """
        if self.ntotal == 0:
            return [(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)) for _ in queries]
        k = min(k, self.ntotal)
        keep_alive: tuple[faiss.IDSelector, ...] = ()
        if allowed is not None:
            keep_alive = (faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)),)
        elif self._tombstone_selector is not None:
            keep_alive = self._tombstone_selector
        # Fraction of the structure a result may come from: the filter's share, or 1 minus tombstones.
        allowed_fraction = (allowed.size if allowed is not None else self.live_count) / self.ntotal
        params = self._search_parameters(k, keep_alive[0] if keep_alive else None, tuning, allowed_fraction)
        scores, labels = self.index.search(queries, k, params=params)
        results = []
        for row_labels, row_scores in zip(labels, scores, strict=True):
            valid = row_labels >= 0
            results.append((row_labels[valid], row_scores[valid]))
        return results

    def _search_parameters(
        self, k: int, selector: faiss.IDSelector | None, tuning: SearchTuning, allowed_fraction: float
    ) -> faiss.SearchParameters | None:
        """Return the search parameters, widening the search in proportion to how selective a filter is.

        HNSW keeps only allowed vectors among the efSearch candidates it collects, and IVF finds them
        only in the lists it probes, so both need about 1/allowed_fraction times the effort to collect k
        allowed results. The widening is capped (MAX_FILTERED_EF_SEARCH, all lists); a query still left
        short is re-ranked exactly by the store.
        """
        extra = {"sel": selector} if selector is not None else {}
        widen = 1.0 / max(allowed_fraction, 1e-9)
        if self.built_spec == EXACT_SPEC:
            return faiss.SearchParameters(**extra) if extra else None
        if self.info.kind is IndexKind.HNSW:
            ef_search = max(tuning.hnsw_ef_search, k)
            ef_search = min(
                max(ef_search, math.ceil(ef_search * widen)), max(MAX_FILTERED_EF_SEARCH, ef_search)
            )
            return faiss.SearchParametersHNSW(efSearch=ef_search, **extra)
        nlist = faiss.extract_index_ivf(self.index).nlist
        nprobe = min(nlist, math.ceil(tuning.ivf_nprobe * widen))
        return faiss.SearchParametersIVF(nprobe=nprobe, **extra)

    def sync_labels(self, live: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
        """Make the live labels exactly `live`: add the missing ones (vectors from `fetch`), drop the rest.

        Returns (added, removed). Used to catch up an `index.faiss` saved a few writes ago.
        """
        present = self.labels()
        stale = np.setdiff1d(present, live)
        missing = np.setdiff1d(live, present)
        if self.uses_tombstones:
            removed = int(np.setdiff1d(stale, self.tombstones).size)
            self._set_tombstones(stale)
        else:
            removed = int(stale.size)
            self.remove(stale)
        for start in range(0, missing.size, 65_536):
            chunk = missing[start : start + 65_536]
            self.add(chunk, fetch(chunk))
        return int(missing.size), removed

    def save(self, path: Path) -> tuple[int, str]:
        """Write the index to `path` atomically and durably; return (size in bytes, sha256)."""
        digest = replace_durably(path, lambda temp: faiss.write_index(self.index, str(temp)))
        return path.stat().st_size, digest

    @classmethod
    def load(
        cls,
        path: Path,
        info: SpecInfo,
        dim: int,
        *,
        built_spec: str,
        ntotal: int,
        size_bytes: int,
        sha256: str,
    ) -> FaissIndex:
        """Read `index.faiss` and check it against the manifest's record; raise `IndexFileError`."""
        if not path.exists():
            raise IndexFileError("index.faiss is missing")
        actual_size = path.stat().st_size
        if actual_size != size_bytes:
            raise IndexFileError(f"index.faiss is {actual_size} bytes, the manifest records {size_bytes}")
        if sha256_of_file(path) != sha256:
            raise IndexFileError("index.faiss does not match the sha256 in the manifest")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexFileError(f"faiss cannot read index.faiss: {str(e).strip().splitlines()[-1]}") from e
        # read_index returns the concrete class and owns it; a downcast_index copy would not own it.
        expected_kind = IndexKind.FLAT if built_spec == EXACT_SPEC else info.kind
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        if index.d != dim or index.ntotal != ntotal or _kind_of(inner) is not expected_kind:
            raise IndexFileError(
                f"index.faiss contains {type(inner).__name__} with dim {index.d} and {index.ntotal} vectors; "
                f"the manifest records {built_spec} with dim {dim} and {ntotal} vectors"
            )
        return cls(info, dim, index, built_spec)


def _new_structure(spec: str, kind: IndexKind, dim: int) -> faiss.Index:
    structure = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if kind is IndexKind.IVF:
        return structure
    return faiss.IndexIDMap(structure)
