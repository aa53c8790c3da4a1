"""Classification data: the digits split and tensors, ImageNet-layout folders with their transforms, and every
bad-input message (missing folder, empty class folder, undecodable image, differing class sets, wrong task)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import backbones
from classification.data import (
    BadImageError,
    build_datasets,
    collate_skip_bad,
    digits_datasets,
    eval_transform,
    load_digits_tensors,
)

CARD = backbones.ModelCard(family="test", paper="-", table="-", params=0, macs=None, input_size=48, crop_pct=0.75)


def make_folder(root, classes=("cat", "dog"), per_class=3, size=(40, 30), splits=("train", "val")):
    for split in splits:
        for i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("RGB", size, (40 * i + 10 * j, 100, 200)).save(d / f"{j}.jpg")
    return root


# ---- digits ---------------------------------------------------------------------------------------------------------
def test_digits_are_the_real_sklearn_images_upsampled_to_rgb():
    from sklearn.datasets import load_digits

    x, y = load_digits_tensors(8)  # native size: the upsampling is the identity
    d = load_digits()
    assert x.shape == (1797, 3, 8, 8) and torch.equal(y, torch.as_tensor(d.target))
    torch.testing.assert_close(x[:, 0], torch.as_tensor(d.images, dtype=torch.float32) / 16)
    assert torch.equal(x[:, 0], x[:, 2])
    x32, _ = load_digits_tensors(32)
    assert x32.shape == (1797, 3, 32, 32) and 0 <= x32.min() and x32.max() <= 1


def test_digits_split_is_fixed_stratified_and_disjoint():
    a = digits_datasets(CARD, image_size=16)
    b = digits_datasets(CARD, image_size=16)
    assert (len(a.train), len(a.val)) == (1437, 360)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert torch.bincount(a.val.labels).min() >= 35  # every digit in val (stratified: ~36 each)
    train_set = {tuple(v.flatten().tolist()) for v in a.train.images[:, 0]}
    assert not any(tuple(v.flatten().tolist()) in train_set for v in a.val.images[:, 0][:50])
    image, label, index = a.val[3]
    assert image.shape == (3, 16, 16) and index == 3 and label == int(a.val.labels[3])
    mean = torch.tensor(CARD.mean)[:, None, None]
    std = torch.tensor(CARD.std)[:, None, None]
    torch.testing.assert_close(image, (a.val.images[3] - mean) / std)  # the card's normalisation


# ---- imagefolder ----------------------------------------------------------------------------------------------------
def test_imagefolder_uses_card_size_and_crop_ratio(tmp_path):
    make_folder(tmp_path)
    data = build_datasets({"task": "classification", "name": "imagefolder", "root": str(tmp_path)}, CARD)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2
    assert len(data.train) == len(data.val) == 6
    x, y, i = data.train[4]
    assert x.shape == (3, 48, 48) and y == 1 and i == 4
    x, y, i = data.val[0]
    assert x.shape == (3, 48, 48) and y == 0
    assert data.extra["crop_pct"] == 0.75


def test_eval_transform_resizes_to_size_over_crop_pct_then_centre_crops():
    """Resize the short side to 224 / 0.875 = 256, centre-crop 224 (the ImageNet protocol)."""
    img = Image.new("RGB", (512, 300), (255, 0, 0))
    img.paste((0, 255, 0), (256 - 60, 150 - 60, 256 + 60, 150 + 60))  # a 120 px square at the centre
    out = eval_transform(224, (0, 0, 0), (1, 1, 1), crop_pct=0.875)(img)
    assert out.shape == (3, 224, 224)
    green = out[1] > 0.5
    rows, cols = green.any(1).nonzero().flatten(), green.any(0).nonzero().flatten()
    side = 120 * 256 / 300  # the image was scaled by 256 / 300 (short side to 256)
    assert abs(len(rows) - side) <= 2 and abs(len(cols) - side) <= 2
    assert abs((rows[0] + rows[-1]) / 2 - 111.5) <= 1 and abs((cols[0] + cols[-1]) / 2 - 111.5) <= 1  # centred


def test_missing_root_and_split_folder_are_named(tmp_path):
    cfg = {"task": "classification", "name": "imagefolder"}
    with pytest.raises(FileNotFoundError, match="nope"):
        build_datasets({**cfg, "root": str(tmp_path / "nope")}, CARD)
    make_folder(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"val'? does not exist.*ImageNet layout"):
        build_datasets({**cfg, "root": str(tmp_path)}, CARD)


def test_empty_class_folder_is_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "val" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"train/emu'? holds no image files"):
        build_datasets({"task": "classification", "name": "imagefolder", "root": str(tmp_path)}, CARD)


def test_differing_class_sets_are_listed(tmp_path):
    make_folder(tmp_path, classes=("cat", "dog"), splits=("train",))
    make_folder(tmp_path, classes=("cat", "eel"), splits=("val",))
    with pytest.raises(ValueError, match="only in train: dog; only in val: eel"):
        build_datasets({"task": "classification", "name": "imagefolder", "root": str(tmp_path)}, CARD)


def test_undecodable_image_is_named_or_skipped_and_counted(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "val" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    cfg = {"task": "classification", "name": "imagefolder", "root": str(tmp_path)}
    with pytest.raises(BadImageError, match="broken.jpg.*set dataset.bad_images=skip"):  # before any training
        build_datasets(cfg, CARD)
    data = build_datasets({**cfg, "bad_images": "skip"}, CARD)
    idx = [i for i, (p, _) in enumerate(data.val.samples) if p.endswith("broken.jpg")][0]
    with pytest.raises(BadImageError, match="broken.jpg"):
        type(data.val)(data.val.samples, bad_images="fail")[idx]  # when loaded, under "fail"
    images, labels, index, skipped = collate_skip_bad([data.val[i] for i in range(len(data.val))])
    assert skipped == 1 and len(labels) == len(data.val) - 1 and idx not in index.tolist()
    with pytest.raises(ValueError, match="bad_images='ignore'.*fail, skip"):
        build_datasets({**cfg, "bad_images": "ignore"}, CARD)


def test_detection_dataset_and_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="'shapes' is a detection dataset.*dataset=digits or dataset=imagefolder"):
        build_datasets({"task": "detection", "name": "shapes"}, CARD)
    with pytest.raises(ValueError, match="'digit' is unknown.*did you mean digits"):
        build_datasets({"task": "classification", "name": "digit"}, CARD)
    with pytest.raises(ValueError, match="unknown key.*image_sise"):
        build_datasets({"task": "classification", "name": "digits", "image_sise": 32}, CARD)
