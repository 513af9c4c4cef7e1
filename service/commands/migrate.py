"""`axm migrate`: copy a gallery between backends, item by item: embedding, metadata and crop.

    axm migrate --from-dir axm-data --to milvus --milvus-uri http://127.0.0.1:19530 --crops-dir /shared/crops
    axm migrate --from milvus --milvus-uri http://127.0.0.1:19530 --crops-dir /shared/crops --to-dir axm-data-copy

The source is only read (a FAISS source is opened read-only, so a service may keep serving it). The
target gets the source's model identity and dimension; a target built with another model is rejected.
Items are read in id order a page at a time and upserted, so a migration that stopped half-way can be
run again. At the end the command checks the counts (every item read was written, the target grew by
the items created, and the source still has as many items as were read) and exits 1 if one differs.

No model is loaded: embeddings are copied as stored.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from index.store import GalleryStore, NewItem

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 256


@dataclass(frozen=True)
class MigrationReport:
    """Totals of a migration: items read from the source, created and updated in the target, and the
    target's count before and after."""

    read: int
    created: int
    updated: int
    target_count_before: int
    target_count_after: int

    @property
    def complete(self) -> bool:
        """True when every item read was written and the target's count grew by the items created."""
        return (
            self.created + self.updated == self.read
            and self.target_count_after == self.target_count_before + self.created
        )


def copy_gallery(
    source: GalleryStore,
    target: GalleryStore,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> MigrationReport:
    """Copy every item of `source` into `target` through the `GalleryStore` interface.

    `progress(n)` is called after each page with the number of items it copied.
    """
    # NOTE: `NewItem` carries no created_at/updated_at, so the target records the migration time for both.
    before = target.count()
    read = created = updated = 0
    cursor: str | None = None
    while True:
        page = source.list(cursor=cursor, limit=batch_size)
        items = [
            NewItem(
                id=item.id,
                embedding=source.get_embedding(item.id),
                crop=source.read_crop(item.id),
                width=item.width,
                height=item.height,
                camera_id=item.camera_id,
                captured_at=item.captured_at,
                source=item.source,
                extra=item.extra,
            )
            for item in page.items
        ]
        results = target.upsert(items)
        read += len(items)
        created += sum(result.status == "created" for result in results)
        updated += sum(result.status == "updated" for result in results)
        if progress is not None:
            progress(len(items))
        cursor = page.next_cursor
        if cursor is None:
            break
    flush = getattr(target, "flush", None)
    if callable(flush):
        flush()
    return MigrationReport(read, created, updated, before, target.count())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm migrate`."""
    parser.add_argument(
        "--from",
        dest="source",
        choices=("faiss", "milvus"),
        default="faiss",
        help="backend to copy from (default faiss)",
    )
    parser.add_argument(
        "--to", dest="target", choices=("faiss", "milvus"), required=True, help="backend to copy to"
    )
    parser.add_argument("--from-dir", type=Path, help="FAISS data directory to copy from (with --from faiss)")
    parser.add_argument("--to-dir", type=Path, help="FAISS data directory to copy to (with --to faiss)")
    parser.add_argument("--milvus-uri", help="Milvus URI or Milvus Lite .db path (default AXM_MILVUS_URI)")
    parser.add_argument(
        "--milvus-token", default="", help="Milvus token, user:password or an API key (default none)"
    )
    parser.add_argument("--collection", default=None, help="Milvus gallery name (default axm_gallery)")
    parser.add_argument(
        "--crops-dir",
        type=Path,
        help="crops directory of the Milvus gallery (default AXM_DATA_DIR/crops, as the service uses)",
    )
    parser.add_argument(
        "--index-spec", help="FAISS index spec of a new FAISS target (default AXM_INDEX_SPEC, Flat)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"items per page and per upsert (default {DEFAULT_BATCH})",
    )


@dataclass(frozen=True)
class _Endpoints:
    faiss_dir: Path
    milvus_uri: str
    milvus_token: str
    collection: str
    crops_dir: Path
    index_spec: str


def _endpoints(args: argparse.Namespace) -> _Endpoints:
    """Resolve the command's options against the settings; raise ValueError naming a missing option."""
    from index.milvus_store import DEFAULT_COLLECTION
    from service.commands.common import load_settings

    if args.source == args.target:
        raise ValueError(f"--from and --to are both {args.source}; copy between two different backends")
    faiss_dir = args.from_dir if args.source == "faiss" else args.to_dir
    if faiss_dir is None:
        raise ValueError(
            "--from-dir is required with --from faiss"
            if args.source == "faiss"
            else "--to-dir is required with --to faiss"
        )
    settings = load_settings()
    milvus_uri = args.milvus_uri or settings.milvus_uri
    if not milvus_uri:
        raise ValueError("no Milvus URI: pass --milvus-uri or set AXM_MILVUS_URI")
    crops_dir = args.crops_dir or settings.data_dir / "crops"
    if crops_dir.resolve() == (faiss_dir / "crops").resolve():
        raise ValueError(
            f"the Milvus crops directory {crops_dir} is the FAISS gallery's own crops directory; the two "
            "galleries would delete each other's files. Pass another --crops-dir"
        )
    return _Endpoints(
        faiss_dir=faiss_dir,
        milvus_uri=milvus_uri,
        milvus_token=args.milvus_token,
        collection=args.collection or DEFAULT_COLLECTION,
        crops_dir=crops_dir,
        index_spec=args.index_spec or settings.index_spec,
    )


def _faiss_model(directory: Path) -> tuple[str, int]:
    from index.manifest import MANIFEST_NAME, read_manifest
    from index.store import StoreNotFoundError

    manifest = read_manifest(directory / MANIFEST_NAME)
    if manifest is None:
        raise StoreNotFoundError(f"no FAISS gallery in {directory}: {MANIFEST_NAME} is missing")
    return manifest.model_identity, manifest.dim


def _open_stores(ends: _Endpoints, source: str) -> tuple[GalleryStore, GalleryStore]:
    """Open the source read-only and the target for the source's model."""
    from index.faiss_store import FaissGalleryStore
    from index.milvus_store import open_milvus_store, read_milvus_gallery_model

    if source == "faiss":
        identity, dim = _faiss_model(ends.faiss_dir)
        source_store: GalleryStore = FaissGalleryStore.open(
            ends.faiss_dir, model_identity=identity, dim=dim, read_only=True, create=False
        )
    else:
        identity, dim = read_milvus_gallery_model(
            ends.milvus_uri, collection=ends.collection, token=ends.milvus_token
        )
        source_store = open_milvus_store(
            ends.milvus_uri,
            model_identity=identity,
            dim=dim,
            crops_dir=ends.crops_dir,
            collection=ends.collection,
            token=ends.milvus_token,
            create=False,
        )
    try:
        if source == "faiss":
            target_store: GalleryStore = open_milvus_store(
                ends.milvus_uri,
                model_identity=identity,
                dim=dim,
                crops_dir=ends.crops_dir,
                collection=ends.collection,
                token=ends.milvus_token,
            )
        else:
            target_store = FaissGalleryStore.open(
                ends.faiss_dir, model_identity=identity, dim=dim, index_spec=ends.index_spec
            )
    except BaseException:
        source_store.close()
        raise
    return source_store, target_store


def run(args: argparse.Namespace) -> int:
    """Run `axm migrate`; exit status 1 when the final count check fails."""
    from tqdm import tqdm

    from index.store import GalleryError
    from service.commands.common import SettingsRejected, fail

    if args.batch_size < 1:
        return fail("migrate", f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        ends = _endpoints(args)
        source, target = _open_stores(ends, args.source)
    except (ValueError, SettingsRejected, GalleryError) as e:
        return fail("migrate", str(e))

    try:
        total = source.count()
        logger.info("migrating %d items from %s to %s", total, args.source, args.target)
        with tqdm(total=total, unit="item", desc="migrate") as bar:
            report = copy_gallery(source, target, batch_size=args.batch_size, progress=bar.update)
        source_count = source.count()
    except GalleryError as e:
        return fail("migrate", str(e))
    finally:
        source.close()
        target.close()

    print(
        f"read {report.read} items from {args.source}: {report.created} created, {report.updated} updated in "
        f"{args.target}; target count {report.target_count_before} -> {report.target_count_after}"
    )
    if not report.complete or report.read != source_count:
        print(
            f"count check failed: the source holds {source_count} items, {report.read} were read and the target "
            f"grew by {report.target_count_after - report.target_count_before}; another writer may have changed "
            "either gallery, so run the migration again"
        )
        return 1
    return 0
