"""AXM-Net and the baseline in a small configuration with the real packaged weights: shapes, no
cross-modal leak, batch independence, gradients, losses and optimiser groups."""

from __future__ import annotations

import pytest
import torch

from model.axm import AXMBlock
from model.config import (
    AXMConfig,
    HeadConfig,
    InputConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    TextEncoderConfig,
)
from model.network import AXMNet, InvalidInputError, build_model

NUM_CLASSES = 6
CAPTIONS = [
    "A man wearing a red jacket, black trousers and white sneakers, carrying a backpack.",
    "The woman has long dark hair and wears a blue dress with a brown belt.",
    "a person in a grey hoodie",
    "A young man in a white shirt and jeans is walking while holding a phone in his right hand.",
]


def small_config(variant: str = "axm", **changes) -> ModelConfig:
    return ModelConfig(
        variant=variant,
        input=InputConfig(height=128, width=64),
        axm=AXMConfig(num_blocks=1),
        head=HeadConfig(embed_dim=64),
        num_classes=NUM_CLASSES,
        **changes,
    )


@pytest.fixture(scope="module")
def axm_model() -> AXMNet:
    torch.manual_seed(0)
    return build_model(small_config())


@pytest.fixture(scope="module")
def baseline_model() -> AXMNet:
    torch.manual_seed(0)
    return build_model(small_config("baseline"))


def crops(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 128, 64, generator=generator)


def test_default_config_builds():
    model = build_model(ModelConfig())
    embeddings = model.encode_images(torch.randn(1, 3, 256, 128))
    assert embeddings.shape == (1, 512)
    assert model.axm.blocks[0].gate.reduce.in_features == 64
    assert len(model.axm.blocks) == 2


@pytest.mark.parametrize("fixture", ["axm_model", "baseline_model"])
def test_encode_shapes_and_unit_norm(request, fixture):
    model = request.getfixturevalue(fixture)
    images = model.encode_images(crops(3))
    texts = model.encode_texts(CAPTIONS)
    assert images.shape == (3, 64)
    assert texts.shape == (4, 64)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(4))


def test_forward_output_fields(axm_model):
    axm_model.train()
    output = axm_model(crops(4), axm_model.tokenize(CAPTIONS))
    assert output.image_features.shape == (4, 64)
    assert output.text_features.shape == (4, 64)
    assert output.image_part_features.shape == (4, 6, 32)
    assert output.image_logits.shape == (4, NUM_CLASSES)
    assert output.text_logits.shape == (4, NUM_CLASSES)
    assert len(output.part_logits) == 6


def test_baseline_has_no_axm_parts(baseline_model):
    assert not hasattr(baseline_model, "axm")
    assert not hasattr(baseline_model, "part_head")
    assert not hasattr(baseline_model, "text_attention")
    baseline_model.eval()
    output = baseline_model(crops(2), baseline_model.tokenize(CAPTIONS[:2]))
    assert output.image_part_features is None
    assert output.part_logits is None


@pytest.mark.parametrize("fixture", ["axm_model", "baseline_model"])
def test_no_cross_modal_leak(request, fixture):
    model = request.getfixturevalue(fixture).eval()
    images_a, images_b = crops(4, seed=1), crops(4, seed=2)
    tokens_a, tokens_b = model.tokenize(CAPTIONS), model.tokenize(["short", "another text", "x", "y z"])
    with torch.no_grad():
        first = model(images_a, tokens_a)
        other_texts = model(images_a, tokens_b)
        other_images = model(images_b, tokens_a)
        image_only = model(images_a, None)
        text_only = model(None, tokens_a)
    assert torch.equal(first.image_features, other_texts.image_features)
    assert torch.equal(first.image_features, image_only.image_features)
    assert torch.equal(first.text_features, other_images.text_features)
    assert torch.equal(first.text_features, text_only.text_features)


@pytest.mark.parametrize("fixture", ["axm_model", "baseline_model"])
def test_crop_alone_matches_batch_of_32(request, fixture):
    model = request.getfixturevalue(fixture)
    batch = crops(32, seed=3)
    together = model.encode_images(batch)
    alone = model.encode_images(batch[7:8])
    torch.testing.assert_close(alone[0], together[7], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fixture", ["axm_model", "baseline_model"])
def test_text_independent_of_batch_padding(request, fixture):
    model = request.getfixturevalue(fixture)
    short = "a person in a grey hoodie"
    long = " ".join(["a tall man in a long black coat with a red scarf and brown leather boots"] * 3)
    alone = model.encode_texts([short])
    padded = model.encode_texts([long, short, long])
    assert (
        model.tokenize([long, short]).attention_mask[1].sum()
        < model.tokenize([long, short]).input_ids.shape[1]
    )
    # Float tolerance: different padding changes only the summation order of batched kernels.
    torch.testing.assert_close(alone[0], padded[1], atol=1e-5, rtol=0)


def test_eval_twice_identical(axm_model):
    images, texts = crops(5, seed=4), CAPTIONS
    assert torch.equal(axm_model.encode_images(images), axm_model.encode_images(images))
    assert torch.equal(axm_model.encode_texts(texts), axm_model.encode_texts(texts))


def test_encode_restores_training_mode(axm_model):
    axm_model.train()
    axm_model.encode_images(crops(1))
    assert axm_model.training
    axm_model.eval()
    axm_model.encode_texts(["a man"])
    assert not axm_model.training


def test_one_step_reaches_every_axm_parameter():
    torch.manual_seed(0)
    model = build_model(small_config())
    model.train()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    texts = [
        CAPTIONS[0],
        CAPTIONS[3],
        CAPTIONS[1],
        CAPTIONS[1] + " She looks left.",
        CAPTIONS[2],
        CAPTIONS[2],
    ]
    optimizer = torch.optim.AdamW(model.param_groups(OptimizerConfig()))

    losses = model.compute_losses(model(crops(6, seed=5), model.tokenize(texts)), labels)
    optimizer.zero_grad()
    losses["total"].backward()

    for module_name in (
        "axm",
        "part_head",
        "text_attention",
        "part_projection",
        "part_classifiers",
        "classifier",
        "image_skip",
        "text_skip",
    ):
        for name, parameter in getattr(model, module_name).named_parameters():
            assert parameter.grad is not None, f"{module_name}.{name} got no gradient"
            assert parameter.grad.abs().sum() > 0, f"{module_name}.{name} has a zero gradient"
    before = model.axm.blocks[0].gate.reduce.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.axm.blocks[0].gate.reduce.weight)


def test_gate_is_one_module_for_both_modalities(axm_model):
    block = axm_model.axm.blocks[0]
    assert isinstance(block, AXMBlock)
    gates = [module for module in block.modules() if type(module).__name__ == "ChannelGate"]
    assert len(gates) == 1
    calls = []
    handle = block.gate.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    try:
        axm_model.eval()
        with torch.no_grad():
            axm_model(crops(2), axm_model.tokenize(CAPTIONS[:2]))
    finally:
        handle.remove()
    # Four streams per modality, image first, all through the same gate.
    assert len(calls) == 8


def test_paired_losses_terms(axm_model):
    axm_model.train()
    output = axm_model(crops(4), axm_model.tokenize(CAPTIONS))
    losses = axm_model.compute_losses(output, torch.tensor([0, 0, 1, 1]))
    assert set(losses) == {"identity", "part_identity", "triplet", "affinity", "total"}
    weights = axm_model.config.loss
    expected = (
        weights.identity * losses["identity"]
        + weights.part_identity * losses["part_identity"]
        + weights.triplet * losses["triplet"]
        + weights.affinity * losses["affinity"]
    )
    torch.testing.assert_close(losses["total"], expected)


def test_image_only_batch_gives_image_terms(axm_model):
    axm_model.train()
    output = axm_model(crops(4), None)
    losses = axm_model.compute_losses(output, torch.tensor([3, 3, 4, 4]))
    assert set(losses) == {"identity", "part_identity", "triplet", "total"}
    losses["total"].backward()
    assert axm_model.classifier.weight.grad is not None
    axm_model.zero_grad()


def test_zero_weight_skips_term():
    torch.manual_seed(0)
    model = build_model(small_config(loss=LossConfig(affinity=0.0, part_identity=0.0, cmpm=1.0)))
    model.train()
    losses = model.compute_losses(model(crops(4), model.tokenize(CAPTIONS)), torch.tensor([0, 0, 1, 1]))
    assert "affinity" not in losses
    assert "part_identity" not in losses
    assert losses["cmpm"] > 0


def test_baseline_losses(baseline_model):
    baseline_model.train()
    output = baseline_model(crops(4), baseline_model.tokenize(CAPTIONS))
    losses = baseline_model.compute_losses(output, torch.tensor([0, 0, 1, 1]))
    assert set(losses) == {"identity", "triplet", "affinity", "total"}


def test_labels_out_of_range_rejected(axm_model):
    output = axm_model(crops(2), None)
    with pytest.raises(InvalidInputError, match="relabel identities"):
        axm_model.compute_losses(output, torch.tensor([0, NUM_CLASSES]))


def test_forward_rejects_bad_input(axm_model):
    with pytest.raises(InvalidInputError, match="neither images nor tokens"):
        axm_model(None, None)
    with pytest.raises(InvalidInputError, match=r"expected \(B, 3, H, W\)"):
        axm_model(torch.randn(3, 128, 64), None)
    with pytest.raises(InvalidInputError, match="list of strings"):
        axm_model.tokenize("a single string")


def test_param_groups_cover_trainable_once(axm_model):
    optim = OptimizerConfig(lr=1e-3, backbone_lr=1e-4, text_lr=1e-5)
    groups = axm_model.param_groups(optim)
    grouped = [id(p) for group in groups for p in group["params"]]
    trainable = [id(p) for p in axm_model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == set(trainable)
    by_name = {group["name"]: group for group in groups}
    assert by_name["image_backbone"]["lr"] == 1e-4
    assert by_name["new_layers"]["lr"] == 1e-3
    assert by_name["new_layers_no_decay"]["weight_decay"] == 0.0
    # The default text encoder is frozen, so it has no group.
    assert not any(name.startswith("text_encoder") for name in by_name)


def test_text_trainable_layers_top_only():
    model = build_model(small_config(text=TextEncoderConfig(trainable_layers=1)))
    transformer = model.text_encoder.transformer
    top = {id(p) for p in transformer.encoder.layer[-1].parameters()}
    for parameter in transformer.parameters():
        assert parameter.requires_grad == (id(parameter) in top)
    groups = {group["name"]: group for group in model.param_groups(OptimizerConfig(text_lr=2e-5))}
    assert groups["text_encoder"]["lr"] == 2e-5
    assert len(groups["text_encoder"]["params"]) + len(groups["text_encoder_no_decay"]["params"]) == len(top)


def test_cached_hidden_states_match(axm_model):
    axm_model.eval()
    tokens = axm_model.tokenize(CAPTIONS)
    cached = type(tokens)(
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        token_counts=tokens.token_counts,
        truncated=tokens.truncated,
        hidden_states=axm_model.encode_text_hidden_states(tokens),
    )
    with torch.no_grad():
        direct = axm_model(None, tokens).text_features
        from_cache = axm_model(None, cached).text_features
    assert torch.equal(direct, from_cache)


def test_tokenize_reports_truncation(axm_model):
    long = " ".join(["word"] * 100)
    tokens = axm_model.tokenize([long, "a short text"])
    assert tokens.truncated == [True, False]
    assert tokens.token_counts[0] == axm_model.config.text.max_length
    # [CLS] a short text [SEP]
    assert tokens.token_counts[1] == 5
    exact = axm_model.tokenize([" ".join(["word"] * 62)])
    assert exact.token_counts == [64]
    assert exact.truncated == [False]
