"""Retrieval metrics over the full ranking and the `axm evaluate` command.

Protocol (the field's standard for text-based person search):
- text->image: every caption of the split is a query; every image of the split is in the gallery.
- image->image: camera-A images are queries, camera-B images the gallery (CUHK01 convention), on the
  same identities.

Metrics follow torchreid's definitions. For one query, sort the gallery by score, highest first:
- cmc[k-1] is 1 when an item of the query's identity is among the top k; Rank-k is its mean.
- AP is the mean, over the relevant items, of the precision at each relevant item's position; mAP is
  its mean over queries.
- INP is (number of relevant items) / (position of the last relevant item), positions counted from
  1; mINP is its mean. It measures how far down the hardest match lies.
Ties: items with equal scores keep gallery order (a stable sort), so the lower gallery index ranks
first, as `np.argsort(-scores, kind="stable")` does. Queries without a relevant gallery item are
left out of every mean and counted separately. All reported metrics are percentages.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.data import PedesSplit, camera_query_gallery, load_split, read_annotations
from model.errors import ModelError

if TYPE_CHECKING:
    from model.encoder import Encoder

logger = logging.getLogger(__name__)

# Queries ranked per block. The working arrays take about 40 bytes per (query, gallery) pair, so a
# block against 100,000 gallery images takes about 1 GB.
QUERY_BLOCK = 256
IMAGE_LOAD_BLOCK = 256


class EvaluationError(ModelError):
    """Raised when metric inputs disagree in shape or no query has a relevant gallery item."""


@dataclass(frozen=True)
class RankMetrics:
    """Ranking metrics of one query set against one gallery (fractions in 0..1).

    `cmc` has one entry per rank 1..max_rank; `valid_queries` counts the queries that have at least
    one relevant gallery item, the only ones averaged.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    valid_queries: int
    num_queries: int
    num_gallery: int

    def summary(self) -> dict[str, float | int]:
        """Return Rank-1/5/10, mAP and mINP in percent, with the query and gallery counts."""
        out: dict[str, float | int] = {}
        for k in (1, 5, 10):
            if k <= len(self.cmc):
                out[f"rank{k}"] = round(100.0 * float(self.cmc[k - 1]), 2)
        out["mAP"] = round(100.0 * self.mAP, 2)
        out["mINP"] = round(100.0 * self.mINP, 2)
        out["queries"] = self.num_queries
        out["valid_queries"] = self.valid_queries
        out["gallery"] = self.num_gallery
        return out


def evaluate_rank(
    scores: np.ndarray,
    q_pids: Sequence[int] | np.ndarray,
    g_pids: Sequence[int] | np.ndarray,
    *,
    max_rank: int = 10,
) -> RankMetrics:
    """Compute CMC up to `max_rank`, mAP and mINP from a (num_query, num_gallery) score matrix.

    Bigger scores rank first; pass `-distmat` for distances. Ties keep gallery order (stable sort).
    """
    scores = np.asarray(scores)
    q_pids = np.asarray(q_pids)
    g_pids = np.asarray(g_pids)
    if scores.ndim != 2 or scores.shape != (len(q_pids), len(g_pids)):
        raise EvaluationError(
            f"scores must have shape (num_query, num_gallery) = ({len(q_pids)}, {len(g_pids)}), "
            f"got {scores.shape}"
        )
    if max_rank < 1:
        raise EvaluationError(f"max_rank must be at least 1, got {max_rank}")

    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    ap_sum = inp_sum = 0.0
    valid = 0
    for start in range(0, len(q_pids), QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        order = np.argsort(-scores[block], axis=1, kind="stable")
        matches = g_pids[order] == q_pids[block, None]  # (q, G) bool, in rank order
        num_relevant = matches.sum(axis=1)
        keep = num_relevant > 0
        matches, num_relevant = matches[keep], num_relevant[keep]
        valid += int(keep.sum())
        if not len(matches):
            continue

        hits = np.cumsum(matches, axis=1)  # relevant items among the top 1..G
        positions = np.arange(1, matches.shape[1] + 1)
        cmc = hits[:, :max_rank] > 0
        if cmc.shape[1] < max_rank:  # gallery smaller than max_rank: later ranks stay at the last value
            cmc = np.concatenate([cmc, np.repeat(cmc[:, -1:], max_rank - cmc.shape[1], axis=1)], axis=1)
        cmc_sum += cmc.sum(axis=0)
        precision_at_hits = (hits / positions) * matches
        ap_sum += float((precision_at_hits.sum(axis=1) / num_relevant).sum())
        last_position = matches.shape[1] - np.argmax(matches[:, ::-1], axis=1)
        inp_sum += float((num_relevant / last_position).sum())

    if valid == 0:
        raise EvaluationError(
            f"none of the {len(q_pids)} queries has a relevant item among {len(g_pids)} gallery items; "
            f"check that queries and gallery come from the same identities"
        )
    if valid < len(q_pids):
        logger.warning(
            "%d of %d queries have no relevant gallery item and are left out",
            len(q_pids) - valid,
            len(q_pids),
        )
    return RankMetrics(
        cmc=(cmc_sum / valid).astype(np.float64),
        mAP=ap_sum / valid,
        mINP=inp_sum / valid,
        valid_queries=valid,
        num_queries=len(q_pids),
        num_gallery=len(g_pids),
    )


# --- embedding a split -------------------------------------------------------------------------


def load_images(split: PedesSplit, indices: Sequence[int] | None = None) -> list[Any]:
    """Decode images of a split through `model.preprocess`, the path the service uses."""
    from model.preprocess import open_image_file

    chosen = range(len(split.images)) if indices is None else indices
    return [open_image_file(split.images[i].path).image for i in chosen]


def embed_split(encoder: Encoder, split: PedesSplit) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed every image and caption of a split; return (image, text) embeddings and truncated captions."""
    image_blocks = []
    for start in range(0, len(split.images), IMAGE_LOAD_BLOCK):
        indices = range(start, min(start + IMAGE_LOAD_BLOCK, len(split.images)))
        image_blocks.append(encoder.encode_images(load_images(split, indices)))
    image_embeddings = np.concatenate(image_blocks).astype(np.float32, copy=False)

    texts = encoder.encode_texts([caption.text for caption in split.captions])
    truncated = int(np.asarray(texts.truncated).sum())
    return image_embeddings, np.asarray(texts.embeddings, dtype=np.float32), truncated


def evaluate_split(encoder: Encoder, split: PedesSplit, *, max_rank: int = 10) -> dict[str, Any]:
    """Evaluate text->image and image->image retrieval on one split; metrics in percent."""
    started = time.perf_counter()
    image_embeddings, text_embeddings, truncated = embed_split(encoder, split)
    embed_seconds = time.perf_counter() - started

    labels = np.array(split.labels)
    caption_labels = np.array([caption.label for caption in split.captions])
    text_to_image = evaluate_rank(
        text_embeddings @ image_embeddings.T, caption_labels, labels, max_rank=max_rank
    )
    result: dict[str, Any] = {
        "split": split.name,
        "identities": split.num_identities,
        "text_to_image": text_to_image.summary(),
        "image_to_image": None,
        "truncated_captions": truncated,
        "embeddings_per_second": round((len(split.images) + len(split.captions)) / embed_seconds, 1),
    }

    queries, gallery = camera_query_gallery(split)
    if queries:
        scores = image_embeddings[queries] @ image_embeddings[gallery].T
        image_to_image = evaluate_rank(scores, labels[queries], labels[gallery], max_rank=max_rank)
        result["image_to_image"] = image_to_image.summary()
    else:
        logger.info("split %s has no camera A/B images; image->image skipped", split.name)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def format_table(result: dict[str, Any]) -> str:
    """Render an evaluation result as a fixed-width table."""
    header = f"{'task':<16}{'queries':>8}{'gallery':>8}{'R1':>8}{'R5':>8}{'R10':>8}{'mAP':>8}{'mINP':>8}"
    lines = [header, "-" * len(header)]
    for task in ("text_to_image", "image_to_image"):
        metrics = result.get(task)
        if not metrics:
            continue
        cells = [
            f"{metrics.get(key, float('nan')):>8.2f}" for key in ("rank1", "rank5", "rank10", "mAP", "mINP")
        ]
        lines.append(
            f"{task.replace('_to_', '->'):<16}{metrics['queries']:>8}{metrics['gallery']:>8}" + "".join(cells)
        )
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm evaluate`."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.safetensors) to evaluate")
    parser.add_argument(
        "--data", required=True, help="annotation file (CUHK-PEDES reid_raw.json or a variant)"
    )
    parser.add_argument(
        "--images", required=True, help="image root the annotation file paths are relative to"
    )
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument(
        "--device", default="cpu", help="torch device, for example cpu or cuda:0 (default: cpu)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images or captions per forward pass (default: 64)"
    )
    parser.add_argument(
        "--max-rank", type=int, default=10, help="maximum rank of the CMC curve (default: 10)"
    )


def run(args: argparse.Namespace) -> int:
    """Run `axm evaluate`: embed the split through `Encoder`, print the table, write the JSON."""
    from model.encoder import Encoder

    records = read_annotations(args.data)
    split = load_split(args.data, args.images, split=args.split, records=records)
    started = time.perf_counter()
    encoder = Encoder.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    logger.info(
        "loaded checkpoint %s (identity %s) in %.1f s",
        args.checkpoint,
        encoder.identity,
        time.perf_counter() - started,
    )

    result = evaluate_split(encoder, split, max_rank=args.max_rank)
    result = {"checkpoint": str(args.checkpoint), "identity": encoder.identity, **result}
    print(format_table(result))
    print(
        f"{result['truncated_captions']} of {len(split.captions)} captions were truncated to the token limit"
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        logger.info("wrote %s", out)
    return 0
