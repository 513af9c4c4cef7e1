"""Connections to Milvus for the gallery store: clients, Milvus Lite servers, errors and collection setup.

A URI ending in `.db` names a Milvus Lite directory, served by pymilvus from a gRPC server that
milvus-lite starts inside this process on 127.0.0.1; any other URI names a Milvus server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from index.milvus_schema import CollectionConfig, build_index_params, build_schema, new_properties
from index.store import StoreCorruptError, StoreLockedError, StoreUnavailableError

logger = logging.getLogger(__name__)


class MilvusUnavailableError(StoreUnavailableError):
    """Raised when the Milvus server cannot be reached or fails a request it should accept."""


# Milvus Lite serves a `.db` directory from one in-process server per path. Several stores in one
# process may share that server, so it is released only when the last of them closes.
_lite_users: dict[str, int] = {}
_lite_users_lock = threading.Lock()


def is_lite_uri(uri: str) -> bool:
    """Return True when `uri` names a Milvus Lite directory rather than a server."""
    return uri.endswith(".db")


def connect(uri: str, token: str) -> MilvusClient:
    """Return a client of the server at `uri`, or of a Milvus Lite directory started in this process."""
    if is_lite_uri(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri=uri, token=token)
    except MilvusException as e:
        if is_lite_uri(uri):
            raise StoreLockedError(
                f"Milvus Lite could not open {uri}: {e.message}. Another process may hold it; stop that process "
                "or point every process at one Milvus server"
            ) from e
        raise MilvusUnavailableError(
            f"cannot connect to Milvus at {uri}: {e.message}; check that it is running"
        ) from e


def acquire_lite(uri: str) -> None:
    """Count one more store using the Milvus Lite server of `uri`."""
    with _lite_users_lock:
        key = os.path.abspath(uri)
        _lite_users[key] = _lite_users.get(key, 0) + 1


def release_lite(uri: str) -> None:
    """Count one store less on the Milvus Lite server of `uri`; stop the server after the last one."""
    key = os.path.abspath(uri)
    with _lite_users_lock:
        remaining = _lite_users.get(key, 0) - 1
        if remaining > 0:
            _lite_users[key] = remaining
            return
        _lite_users.pop(key, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(key)


@contextlib.contextmanager
def milvus_errors(action: str) -> Iterator[None]:
    """Translate pymilvus errors into gallery errors that name the failed action."""
    try:
        yield
    except MilvusException as e:
        raise MilvusUnavailableError(f"Milvus failed to {action}: {e.message} (code {e.code})") from e


def alias_exists(client: MilvusClient, name: str) -> bool:
    """Return whether the gallery alias `name` exists; raise when `name` is a plain collection."""
    aliases = client.list_aliases().get("aliases", [])
    if name in aliases:
        return True
    if client.has_collection(name):
        raise StoreCorruptError(
            f"{name!r} is a plain Milvus collection, not a gallery alias; choose another collection name for the "
            "gallery or rename that collection"
        )
    return False


def create_collection(
    client: MilvusClient, name: str, *, dim: int, config: CollectionConfig, properties: dict[str, str]
) -> None:
    """Create one gallery collection with its indexes, at Strong consistency so reads return every write."""
    client.create_collection(
        name,
        schema=build_schema(dim),
        consistency_level="Strong",
        properties=properties,
        num_shards=config.num_shards,
    )
    # sync=False skips pymilvus' polling of the index state (at least 0.5 s per index); the collection is
    # empty, so there is nothing to build before the load.
    client.create_index(name, build_index_params(client, config), sync=False)
    client.load_collection(name)


def create_gallery(
    client: MilvusClient, name: str, *, model_identity: str, dim: int, config: CollectionConfig
) -> None:
    """Create the first generation's collection and point the alias `name` at it.

    Two processes creating the same gallery at once race on the alias; the loser finds it and goes on.
    """
    target = f"{name}__g1"
    try:
        if not client.has_collection(target):
            create_collection(
                client,
                target,
                dim=dim,
                config=config,
                properties=new_properties(
                    model_identity=model_identity, dim=dim, generation=1, index_spec=config.spec
                ),
            )
        client.create_alias(target, name)
    except MilvusException:
        time.sleep(0.5)
        if not alias_exists(client, name):
            raise
    logger.info("Milvus gallery %r created as collection %s (%d-d, %s)", name, target, dim, config.spec)
