"""Training losses: shared-classifier identity, part identity, batch-hard triplet, affinity BCE, CMPM.

Identity logits come from the network (one classifier shared by the image and text global vectors, so
both modalities are pulled to the same class prototypes). Metric losses work on L2-normalised features,
so the triplet margin and the affinity logits are in cosine units. A batch without texts (uncaptioned
crops) gets the image terms only, with an image-to-image triplet; a batch without images gets the text
terms only.

Reconstruction, not the paper: the loss set (identity, triplet, affinity BCE) is what AXM-Net v1 names;
the re-weighting of positives, the learnable scale and bias, and averaging the two directions are ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import LossConfig

if TYPE_CHECKING:
    from model.network import ModelOutput


def identity_loss(logits: Tensor, labels: Tensor, *, label_smoothing: float) -> Tensor:
    """Cross-entropy of (B, N) logits against identity labels, with label smoothing."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def part_identity_loss(part_logits: Sequence[Tensor], labels: Tensor, *, label_smoothing: float) -> Tensor:
    """Mean identity loss over the per-part classifiers."""
    losses = [identity_loss(logits, labels, label_smoothing=label_smoothing) for logits in part_logits]
    return torch.stack(losses).mean()


def batch_hard_triplet_loss(
    anchors: Tensor,
    candidates: Tensor,
    anchor_labels: Tensor,
    candidate_labels: Tensor,
    *,
    margin: float,
    same_set: bool = False,
) -> Tensor:
    """Batch-hard triplet loss on cosine similarity: hardest positive vs hardest negative per anchor.

    `same_set` marks candidates that are the anchors themselves (image-to-image), so an anchor is not
    its own positive. Anchors without a positive or a negative among the candidates are skipped; with
    none left the loss is a zero that keeps the graph.
    """
    scores = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T  # (Na, Nc)
    positive = anchor_labels[:, None] == candidate_labels[None, :]
    negative = ~positive
    if same_set:
        positive = positive & ~torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return scores.sum() * 0.0

    hardest_positive = scores.masked_fill(~positive, float("inf")).amin(dim=1)
    hardest_negative = scores.masked_fill(~negative, float("-inf")).amax(dim=1)
    losses = F.relu(margin - hardest_positive + hardest_negative)
    return losses[valid].mean()


def affinity_loss(
    image_features: Tensor, text_features: Tensor, labels: Tensor, *, scale: Tensor, bias: Tensor
) -> Tensor:
    """Binary cross-entropy on all B×B image-text pairs, logits scale·cos + bias, positives = same identity.

    Positives are few (about B/K² of the pairs), so positives and negatives each carry half the weight.
    """
    scores = F.normalize(image_features, dim=1) @ F.normalize(text_features, dim=1).T  # (B, B)
    logits = scale * scores + bias
    targets = (labels[:, None] == labels[None, :]).to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    positive_count = targets.sum()
    negative_count = targets.numel() - positive_count
    positive_term = (losses * targets).sum() / positive_count.clamp_min(1.0)
    if negative_count == 0:
        return positive_term
    negative_term = (losses * (1 - targets)).sum() / negative_count
    return 0.5 * (positive_term + negative_term)


def cmpm_loss(image_features: Tensor, text_features: Tensor, labels: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Cross-modal projection matching (Zhang and Lu, ECCV 2018), both directions averaged.

    KL divergence between the softmax over projections of one modality on the other's normalised
    vectors and the normalised same-identity distribution.
    """
    matches = (labels[:, None] == labels[None, :]).to(image_features.dtype)
    target = matches / matches.sum(dim=1, keepdim=True)

    image_on_text = image_features @ F.normalize(text_features, dim=1).T
    text_on_image = text_features @ F.normalize(image_features, dim=1).T
    losses = []
    for projections in (image_on_text, text_on_image):
        log_probs = F.log_softmax(projections, dim=1)
        losses.append((log_probs.exp() * (log_probs - torch.log(target + eps))).sum(dim=1).mean())
    return 0.5 * (losses[0] + losses[1])


class AXMLoss(nn.Module):
    """Weighted sum of the configured terms; contains the learnable affinity scale and bias.

    Returns a dict of the unweighted terms that were computed (a term of weight 0 is skipped) and
    `total`, the weighted sum. Identity and triplet terms average over the modalities present.
    """

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.affinity_scale = nn.Parameter(torch.tensor(float(config.affinity_scale)))
        self.affinity_bias = nn.Parameter(torch.tensor(float(config.affinity_bias)))

    def forward(self, output: ModelOutput, labels: Tensor) -> dict[str, Tensor]:
        config = self.config
        image, text = output.image_features, output.text_features
        terms: dict[str, Tensor] = {}

        if config.identity > 0:
            logits = [x for x in (output.image_logits, output.text_logits) if x is not None]
            terms["identity"] = torch.stack(
                [identity_loss(x, labels, label_smoothing=config.label_smoothing) for x in logits]
            ).mean()
        if config.part_identity > 0 and output.part_logits:
            terms["part_identity"] = part_identity_loss(
                output.part_logits, labels, label_smoothing=config.label_smoothing
            )
        if config.triplet > 0:
            terms["triplet"] = self._triplet(image, text, labels)
        if image is not None and text is not None:
            if config.affinity > 0:
                terms["affinity"] = affinity_loss(
                    image, text, labels, scale=self.affinity_scale, bias=self.affinity_bias
                )
            if config.cmpm > 0:
                terms["cmpm"] = cmpm_loss(image, text, labels)

        weights = {
            "identity": config.identity,
            "part_identity": config.part_identity,
            "triplet": config.triplet,
            "affinity": config.affinity,
            "cmpm": config.cmpm,
        }
        total = sum(
            (weights[name] * value for name, value in terms.items()),
            start=torch.zeros((), device=labels.device),
        )
        return {**terms, "total": total}

    def _triplet(self, image: Tensor | None, text: Tensor | None, labels: Tensor) -> Tensor:
        margin = self.config.triplet_margin
        if image is not None and text is not None:
            image_to_text = batch_hard_triplet_loss(image, text, labels, labels, margin=margin)
            text_to_image = batch_hard_triplet_loss(text, image, labels, labels, margin=margin)
            return 0.5 * (image_to_text + text_to_image)
        features = image if image is not None else text
        assert features is not None, "the network output has neither modality"
        return batch_hard_triplet_loss(features, features, labels, labels, margin=margin, same_set=True)
