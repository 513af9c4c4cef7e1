"""Options and entry of `axm ingest --ray ADDRESS`, kept apart from the job so that `axm ingest --help` stays fast."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm ingest --ray`."""
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the ingest as a Ray Data job: `local` starts a runtime on 127.0.0.1, anything else is the "
        "address of a running cluster (ray://host:10001 or host:6379)",
    )
    parser.add_argument("--ray-actors", type=int, default=1, help="model actors embedding crops (default 1)")
    parser.add_argument(
        "--ray-cpus-per-actor", type=float, default=1.0, help="CPUs each model actor requests (default 1)"
    )
    parser.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        help="GPUs each model actor requests (default 1 when AXM_DEVICE is cuda, else 0)",
    )
    parser.add_argument(
        "--ray-cpus-per-read", type=float, default=0.25, help="CPUs each read task requests (default 0.25)"
    )


def run_command(args: argparse.Namespace, sources: Sequence[Any]) -> int:
    """Run `axm ingest --ray ADDRESS`: open the gallery here, embed on Ray, print the totals and the count check."""
    from tqdm import tqdm

    from index.store import GalleryError
    from model.checkpoint import read_checkpoint_info
    from model.errors import ModelError
    from service.commands.common import SettingsRejected, fail, load_settings, store_overrides
    from service.commands.ingest import _report
    from service.engine import open_store
    from service.ray_ingest import LOCAL_ADDRESS, RayIngestOptions, ray_runtime, run_ray_ingest

    try:
        settings = load_settings(**store_overrides(args))
        gpus = args.ray_gpus_per_actor
        if gpus is None:
            gpus = 1.0 if settings.device.startswith("cuda") else 0.0
        options = RayIngestOptions(
            address=args.ray,
            actors=args.ray_actors,
            cpus_per_actor=args.ray_cpus_per_actor,
            gpus_per_actor=gpus,
            cpus_per_read=args.ray_cpus_per_read,
            batch_size=args.batch_size or settings.encode_batch_size,
        )
        checkpoint = read_checkpoint_info(settings.checkpoint)
        store = open_store(settings, model_identity=checkpoint.identity, dim=checkpoint.config.head.embed_dim)
    except (SettingsRejected, ValueError, GalleryError, ModelError) as e:
        return fail("ingest", str(e))
    try:
        with (
            ray_runtime(
                options.address,
                num_cpus=os.cpu_count(),
                object_store_bytes=options.object_store_bytes if options.address == LOCAL_ADDRESS else None,
            ),
            tqdm(total=len(sources), unit="crop", desc="ingest (ray)") as bar,
        ):
            report = run_ray_ingest(
                settings,
                store,
                sources,
                options=options,
                model_identity=checkpoint.identity,
                progress=bar.update,
            )
    except (GalleryError, RuntimeError) as e:
        return fail("ingest", str(e))
    finally:
        store.close()
    status = _report(
        report.created, report.updated, [(name, info.code, info.detail) for name, info in report.failures]
    )
    print(f"gallery count {report.count_before} -> {report.count_after} ({report.seconds:.1f} s)")
    if not report.count_matches:
        print(
            f"count check failed: {report.created} items were created but the gallery grew by "
            f"{report.count_after - report.count_before}; another writer changed it meanwhile"
        )
        return 1
    return status
