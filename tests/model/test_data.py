"""Annotation reader, image-only sources, the identity-balanced sampler and augmentation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.data import (
    AugmentConfig,
    DatasetError,
    IdentityBalancedSampler,
    augment_batch,
    camera_query_gallery,
    infer_camera_id,
    load_split,
    read_annotations,
    read_extra_images,
)


def write_images(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 160), (120, 40, 200)).save(path)


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.data
def test_cuhk_pedes_splits(pedes_root):
    annotations = pedes_root / "annotations" / "reid_raw.json"
    records = read_annotations(annotations)
    train = load_split(annotations, pedes_root / "imgs", split="train", records=records)
    val = load_split(annotations, pedes_root / "imgs", split="val", records=records)
    assert (train.num_identities, len(train.images), len(train.captions)) == (125, 499, 998)
    assert (val.num_identities, len(val.images), len(val.captions)) == (83, 332, 664)
    assert sorted(set(val.labels)) == list(range(83))
    assert not set(train.person_ids) & set(val.person_ids)
    for caption in val.captions[:50]:
        assert val.images[caption.image_index].label == caption.label


@pytest.mark.data
def test_val_camera_protocol(pedes_root):
    annotations = pedes_root / "annotations" / "reid_raw.json"
    val = load_split(annotations, pedes_root / "imgs", split="val")
    queries, gallery = camera_query_gallery(val)
    assert len(queries) == 166
    assert len(gallery) == 166
    assert {val.images[i].label for i in queries} == {val.images[i].label for i in gallery}


@pytest.mark.data
def test_cuhk01_extras_skip_captioned_identities(pedes_root):
    annotations = pedes_root / "annotations" / "reid_raw.json"
    val = load_split(annotations, pedes_root / "imgs", split="val")
    extras = read_extra_images(
        pedes_root / "annotations" / "cuhk01_gallery.csv", images_root=pedes_root / "imgs", first_label=125
    )
    assert len(extras.images) == 2732
    assert extras.num_identities == 683
    assert min(extras.labels) == 125
    assert max(extras.labels) == 125 + 683 - 1
    val_files = {image.path.name for image in val.images}
    assert not val_files & {image.path.name for image in extras.images}
    assert Counter(image.camera_id for image in extras.images) == {"A": 1366, "B": 1366}


@pytest.mark.data
def test_cuhk03_extras_resolve_csv_folder(data_root):
    extras = read_extra_images(data_root / "cuhk03_gallery" / "gallery.csv", first_label=0)
    assert len(extras.images) == 938
    assert extras.num_identities == 100
    assert all(image.path.is_file() for image in extras.images[:20])


def test_broken_record_names_index_and_field(tmp_path):
    write_images(tmp_path / "imgs", ["a.png"])
    good = {"id": 3, "file_path": "a.png", "captions": ["a man in red"], "split": "train"}
    bad = {"id": 17, "file_path": "a.png", "captions": "", "split": "train"}
    annotations = write_json(tmp_path / "reid_raw.json", [good, bad])
    with pytest.raises(DatasetError, match=r"record 1 \(id 17\): field 'captions' must be a non-empty list"):
        read_annotations(annotations)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "expected an object, got list"),
        ({"file_path": "a.png", "captions": ["x"], "split": "train"}, "field 'id' must be"),
        ({"id": 1, "captions": ["x"], "split": "train"}, "missing the image path"),
        ({"id": 1, "file_path": "a.png", "captions": ["x", 5], "split": "train"}, r"captions\[1\] must be"),
        ({"id": 1, "file_path": "a.png", "captions": ["x"]}, "field 'split' must be"),
    ],
)
def test_malformed_record_messages(tmp_path, record, message):
    annotations = write_json(tmp_path / "reid_raw.json", [record])
    with pytest.raises(DatasetError, match=message):
        read_annotations(annotations)


def test_not_a_list_and_invalid_json(tmp_path):
    with pytest.raises(DatasetError, match="must contain a JSON list"):
        read_annotations(write_json(tmp_path / "a.json", {"id": 1}))
    broken = tmp_path / "b.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid UTF-8 JSON"):
        read_annotations(broken)


def test_missing_image_names_record(tmp_path):
    write_images(tmp_path / "imgs", ["a.png"])
    records = [
        {"id": 3, "file_path": "a.png", "captions": ["x"], "split": "train"},
        {"id": 4, "file_path": "missing.png", "captions": ["y"], "split": "train"},
    ]
    annotations = write_json(tmp_path / "reid_raw.json", records)
    with pytest.raises(DatasetError, match=r"record 1 \(id '4'\): image not found: .*missing.png"):
        load_split(annotations, tmp_path / "imgs", split="train")


def test_unknown_split_lists_available(tmp_path):
    write_images(tmp_path / "imgs", ["a.png"])
    annotations = write_json(
        tmp_path / "r.json", [{"id": 3, "file_path": "a.png", "captions": ["x"], "split": "train"}]
    )
    with pytest.raises(DatasetError, match=r"no record has split 'val'; the file has splits \['train'\]"):
        load_split(annotations, tmp_path / "imgs", split="val")


def test_icfg_variant(tmp_path):
    names = [
        "test/0001/0001_010_01_0303morning_0015_0.jpg",
        "test/0001/0001_010_01_0303morning_0016_0.jpg",
        "train/0002/x.jpg",
    ]
    write_images(tmp_path / "imgs", names)
    records = [
        {
            "id": 1,
            "file_path": names[0],
            "captions": ["a woman"],
            "processed_tokens": [["a", "woman"]],
            "split": "test",
        },
        {"id": 1, "file_path": names[1], "captions": ["a woman in black"], "split": "test"},
        {"id": 2, "file_path": names[2], "captions": ["a man"], "split": "train"},
    ]
    annotations = write_json(tmp_path / "ICFG-PDES.json", records)
    test = load_split(annotations, tmp_path / "imgs", split="test")
    assert test.num_identities == 1
    assert [caption.text for caption in test.captions] == ["a woman", "a woman in black"]
    assert test.person_ids == ("1",)


def test_rstpreid_variant(tmp_path):
    names = ["0_c14_0010.jpg", "0_c5_0020.jpg", "7_c1_0001.jpg"]
    write_images(tmp_path / "imgs", names)
    records = [
        {"id": 0, "img_path": names[0], "captions": ["a", "b"], "split": "train"},
        {"id": 0, "img_path": names[1], "captions": ["c", "d"], "split": "train"},
        {"id": 7, "img_path": names[2], "captions": ["e", "f"], "split": "val"},
    ]
    annotations = write_json(tmp_path / "data_captions.json", records)
    train = load_split(annotations, tmp_path / "imgs", split="train")
    assert len(train.captions) == 4
    assert [image.camera_id for image in train.images] == ["c14", "c5"]


def test_relabelling_is_contiguous(tmp_path):
    names = [f"{i}.png" for i in range(4)]
    write_images(tmp_path / "imgs", names)
    records = [
        {"id": pid, "file_path": name, "captions": ["x"], "split": "train"}
        for pid, name in zip([900, 5, 900, 42], names, strict=True)
    ]
    split = load_split(write_json(tmp_path / "r.json", records), tmp_path / "imgs", split="train")
    assert split.labels == [0, 1, 0, 2]
    assert split.person_ids == ("900", "5", "42")


def test_camera_from_file_names():
    assert infer_camera_id("CUHK01/0107001.png") == "A"
    assert infer_camera_id("CUHK01/0107004.png") == "B"
    assert infer_camera_id("0_c14_0010.jpg") == "c14"
    assert infer_camera_id("0002_c3s1_000551_01.jpg") == "c3"
    assert infer_camera_id("images/0000_00.jpg") is None


def test_extra_csv_without_person_column(tmp_path):
    csv_path = tmp_path / "extra.csv"
    csv_path.write_text("file_path,view\na.png,A\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="expected a 'file_path' column and a person column"):
        read_extra_images(csv_path)


def sampler_labels() -> list[int]:
    # 10 identities with 1..6 images each, in a mixed order.
    labels = [label for label in range(10) for _ in range(1 + label % 6)]
    return labels[::2] + labels[1::2]


def test_sampler_batches_are_balanced():
    labels = sampler_labels()
    sampler = IdentityBalancedSampler(labels, identities_per_batch=4, images_per_identity=2, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert batches
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(batch) == 8
        assert len(counts) == 4
        assert set(counts.values()) == {2}


def test_sampler_epochs_reshuffle_and_repeat():
    sampler = IdentityBalancedSampler(sampler_labels(), identities_per_batch=4, images_per_identity=2, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert second != first


def test_sampler_ranks_are_disjoint():
    labels = sampler_labels()
    whole = list(IdentityBalancedSampler(labels, identities_per_batch=2, images_per_identity=2, seed=1))
    ranks = [
        list(
            IdentityBalancedSampler(
                labels, identities_per_batch=2, images_per_identity=2, seed=1, rank=r, world_size=2
            )
        )
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) // 2
    assert ranks[0] == whole[0 : 2 * len(ranks[0]) : 2]
    assert ranks[1] == whole[1 : 2 * len(ranks[1]) : 2]


def test_sampler_rejects_too_few_identities():
    with pytest.raises(DatasetError, match="3 identities cannot fill batches of P=4"):
        IdentityBalancedSampler([0, 1, 2], identities_per_batch=4, images_per_identity=2)


def test_augment_keeps_shape_and_changes_pixels():
    images = torch.randn(6, 3, 32, 16)
    out = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    assert torch.equal(images, images.clone())  # the input is not modified in place


def test_augment_flip_only():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    config = AugmentConfig(flip_probability=1.0, pad=0, erase_probability=0.0)
    out = augment_batch(images, config, torch.Generator().manual_seed(0))
    assert torch.equal(out, images.flip(-1))


def test_augment_erasing_zeroes_a_box():
    images = torch.ones(4, 3, 32, 16)
    config = AugmentConfig(flip_probability=0.0, pad=0, erase_probability=1.0)
    out = augment_batch(images, config, torch.Generator().manual_seed(0))
    for image in out:
        zeros = (image == 0).all(dim=0)
        assert 0 < int(zeros.sum()) < 32 * 16
