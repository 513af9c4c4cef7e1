"""`axm reindex --checkpoint NEW`: re-embed every stored crop with another model and switch the gallery to it.

The gallery is opened with the model it was built with: the checkpoint of `--from-checkpoint`, by
default the configured one (AXM_CHECKPOINT). Only that checkpoint's header is read, for its identity
and dimension. Searches on the gallery see the old embeddings until the new ones are all written;
then the gallery records the new model, and the service must be started with AXM_CHECKPOINT=NEW.
The gallery's writer lock means a running service on the same data directory must be stopped first.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from service.commands.common import SettingsRejected, fail, load_settings

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm reindex`."""
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint of the new model (.safetensors)"
    )
    parser.add_argument(
        "--from-checkpoint",
        type=Path,
        help="checkpoint the gallery was built with (default AXM_CHECKPOINT); only its header is read",
    )
    parser.add_argument(
        "--data-dir", help="gallery data directory (overrides AXM_DATA_DIR; default ./axm-data)"
    )
    parser.add_argument("--device", help="torch device, for example cpu or cuda:0 (overrides AXM_DEVICE)")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")


def run(args: argparse.Namespace) -> int:
    """Run `axm reindex`; exit status 1 when any crop failed."""
    from tqdm import tqdm

    from index.store import GalleryError
    from model.checkpoint import read_checkpoint_info
    from model.encoder import Encoder
    from model.errors import ModelError
    from service import jobs
    from service.engine import open_store
    from service.limits import decode_limits

    overrides = {
        name: getattr(args, name) for name in ("data_dir", "device") if getattr(args, name) is not None
    }
    try:
        settings = load_settings(**overrides)
        previous = read_checkpoint_info(args.from_checkpoint or settings.checkpoint)
        store = open_store(settings, model_identity=previous.identity, dim=previous.config.head.embed_dim)
    except (SettingsRejected, GalleryError, ModelError) as e:
        return fail("reindex", str(e))

    try:
        encoder = Encoder.from_checkpoint(args.checkpoint, device=settings.device, batch_size=args.batch_size)
        with tqdm(total=store.count(), unit="crop", desc="reindex") as bar:
            report = jobs.reindex(
                store,
                encoder.encode_images,
                model_identity=encoder.identity,
                dim=encoder.dim,
                limits=decode_limits(settings),
                batch_size=args.batch_size,
                progress=lambda done, _total: bar.update(done - bar.n),
            )
    except (GalleryError, ModelError) as e:
        return fail("reindex", str(e))
    finally:
        store.close()

    print(
        f"re-embedded {report.rewritten} crops with model {report.model_identity} ({report.dim}-d); "
        f"{len(report.failed)} failed"
    )
    for item_id, reason in sorted(report.failed.items()):
        print(f"  {item_id}: {reason}")
    print(f"start the service with AXM_CHECKPOINT={args.checkpoint}")
    return 1 if report.failed else 0
