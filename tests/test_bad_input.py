"""Bad input, case by case: each is read correctly or refused with one message naming the value (and the file and
ids where there are some), before any work, leaving the disk as it was. ``docs/bad_input.md`` lists the same cases.

Oracles come from outside the code under test: numpy (``>> 8`` of the 16-bit pixels written, ``rot90`` of the stored
JPEG pixels), the EXIF orientation definition (6 = rotate 90 degrees clockwise to display), and file listings.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
from classification.data import BadImageError as ClsBadImageError
from classification.data import build_datasets
from detection.data import (
    AnnotationFormatError,
    BadImageError,
    CocoDetection,
    SkippedImage,
    build_transforms,
    load_coco_json,
    read_image,
)
from detection.models import build_detector
from detection.visualize import draw_dataset

ROOT = Path(__file__).resolve().parents[1]
CARD = backbones.ModelCard(family="test", paper="-", table="-", params=0, macs=None, input_size=32)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def write_coco(root: Path, n: int = 3, size: tuple[int, int] = (40, 30), **changes) -> tuple[Path, Path]:
    """``n`` flat-colour JPEGs of ``size`` (w, h) with one box each; ``changes`` replace top-level keys."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        Image.new("RGB", size, (40 * i, 90, 160)).save(img_dir / f"{i}.jpg")
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]} for i in range(1, n + 1)],
        "annotations": [
            {"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
            for i in range(1, n + 1)
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "thing"}],
        **changes,
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    return img_dir, ann


def mutated(root: Path, mutate) -> tuple[Path, Path]:
    img_dir, ann = write_coco(root)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    return img_dir, ann


def refused(root: Path, exc: type[BaseException], match: str, fn, *args, **kwargs) -> str:
    """Call ``fn``, expect ``exc`` matching ``match``, and that nothing under ``root`` changed; return the message."""
    before = snapshot(root)
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert snapshot(root) == before
    return str(info.value)


# ---- detection: the annotation file ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["images"][0].update(id="a"), r"images\[0\]\.id='a'.*integers"),
        (lambda d: d["images"][1].update(id=2.0), r"images\[1\]\.id=2\.0"),
        (lambda d: d["annotations"][0].update(image_id="1"), r"annotations\[0\]\.image_id='1'"),
        (lambda d: d["annotations"][2].update(id=True), r"annotations\[2\]\.id=True"),
        (lambda d: d["categories"][0].update(id="thing"), r"categories\[0\]\.id='thing'"),
        (lambda d: d["images"][0].update(width=0), r"images\[0\]\.width=0.*positive"),
        (lambda d: d["images"][2].update(height="30"), r"images\[2\]\.height='30'"),
        (lambda d: d["images"][2].update(id=1), r"duplicate image ids 1\b"),
        (lambda d: d["annotations"][1].update(id=11), r"duplicate annotation ids 11\b"),
        (lambda d: d["categories"].append({"id": 1, "name": "again"}), r"duplicate category ids 1\b"),
        (lambda d: d["annotations"][1].update(image_id=99), r"annotation ids 12 use image_id 99 missing from 'images'"),
        (lambda d: d["annotations"][0].update(category_id=5), r"annotation ids 11 use category_id 5 missing"),
        (lambda d: d["annotations"][0].pop("id"), r"annotations\[0\] has no 'id' key"),
    ],
)
def test_annotation_file_refused_naming_file_and_ids(tmp_path, mutate, match):
    img_dir, ann = mutated(tmp_path, mutate)
    msg = refused(tmp_path, AnnotationFormatError, match, CocoDetection, img_dir, ann)
    assert str(ann) in msg and "\n" not in msg


def test_many_bad_ids_are_counted_not_all_listed(tmp_path):
    def dangling(d):
        d["annotations"] += [{"id": 100 + k, "image_id": 500 + k, "category_id": 1, "bbox": [0, 0, 4, 4]}
                             for k in range(15)]  # fmt: skip

    _, ann = mutated(tmp_path, dangling)
    msg = refused(tmp_path, AnnotationFormatError, r"annotation ids 100, 101, .*\(15 in all\)", load_coco_json, ann)
    assert "509" in msg and "514" not in msg  # the first 10 image ids are named, the rest counted


def test_non_utf8_json_is_refused_and_other_unicode_encodings_are_read(tmp_path):
    _, ann = write_coco(tmp_path, categories=[{"id": 1, "name": "café"}])
    text = ann.read_text(encoding="utf-8")
    ann.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    refused(tmp_path, AnnotationFormatError, rf"instances.json is not UTF-8 text: byte 0xe9 at offset {offset}",
            load_coco_json, ann)  # fmt: skip
    for encoding in ("utf-8-sig", "utf-16", "utf-32"):  # a BOM is allowed by RFC 8259 readers; the name comes out right
        ann.write_bytes(text.encode(encoding))
        assert load_coco_json(ann)["categories"][0]["name"] == "café"


def test_empty_image_list_is_refused_for_train_and_val(tmp_path):
    for split in ("train", "val"):
        img_dir, ann = write_coco(tmp_path / split, n=0)
        refused(tmp_path, ValueError, r"instances.json lists no images", CocoDetection, img_dir, ann)


# ---- detection: images ----------------------------------------------------------------------------------------------
def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG by the PNG specification (grey, grey+alpha, RGB or RGBA from the last axis), no filter."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # grey, grey + alpha, RGB, RGBA
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) +
                     chunk(b"IEND", b""))  # fmt: skip


def test_16bit_png_decodes_to_its_high_byte_not_white(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, size=(12, 20), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey.png")  # Pillow writes 16-bit grey ("I;16")
    out = np.asarray(read_image(tmp_path / "grey.png"))
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2))
    assert (out == 255).mean() < 0.05  # Pillow's plain convert("RGB") makes ~99% of these pixels 255
    rgb = rng.integers(0, 65536, size=(12, 20, 3), dtype=np.uint16)
    write_png16(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "rgb.png")), (rgb >> 8).astype(np.uint8))
    # through the dataset: the training tensor holds the same values
    img_dir, ann = write_coco(tmp_path / "set", n=1, size=(20, 12))
    Image.fromarray(grey).save(img_dir / "1.png")
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = "1.png"
    ann.write_text(json.dumps(data))
    image, _ = CocoDetection(img_dir, ann)[0]
    torch.testing.assert_close(image[0], torch.from_numpy((grey >> 8).astype(np.float32) / 255))


def test_32bit_image_is_refused_as_a_bad_image(tmp_path):
    img_dir, ann = write_coco(tmp_path, n=2)
    Image.fromarray(np.full((30, 40), 70000, dtype=np.int32)).save(img_dir / "2.tif")
    data = json.loads(ann.read_text())
    data["images"][1]["file_name"] = "2.tif"
    ann.write_text(json.dumps(data))
    refused(tmp_path, BadImageError, r"2\.tif.*mode I \(32-bit\)", CocoDetection, img_dir, ann, on_bad_image="fail")
    item = CocoDetection(img_dir, ann, on_bad_image="skip")[1]
    assert isinstance(item, SkippedImage) and "mode I" in item.error


def write_rotated_jpeg(path: Path) -> np.ndarray:
    """A 40 x 30 (w x h) JPEG stored with EXIF orientation 6 (displayed rotated 90 degrees clockwise, 30 x 40) and a
    red 8 px square at its stored top-left; returns the stored pixels."""
    stored = np.full((30, 40, 3), 200, dtype=np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    return stored


def test_exif_rotated_jpeg_is_read_as_displayed_and_its_boxes_fit(tmp_path):
    img_dir, ann = write_coco(tmp_path, n=1, size=(30, 40))  # the JSON holds the displayed size, as COCO does
    stored = write_rotated_jpeg(img_dir / "1.jpg")
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [22, 0, 8, 8]  # the red square, displayed: stored top-left -> top-right
    ann.write_text(json.dumps(data))
    image, target = CocoDetection(img_dir, ann, on_bad_image="fail")[0]
    assert tuple(image.shape) == (3, 40, 30)
    displayed = torch.from_numpy(np.rot90(stored, k=-1).copy()).permute(2, 0, 1).float() / 255  # clockwise
    assert (image - displayed).abs().mean() < 0.02  # JPEG rounding only
    red = (image[0] > 0.8) & (image[1] < 0.3)
    ys, xs = red.nonzero(as_tuple=True)
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert red.sum() > 40 and x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1


def test_decoded_size_other_than_the_json_is_refused_or_skipped_naming_both_sizes(tmp_path):
    img_dir, ann = write_coco(tmp_path, n=2, size=(40, 30))  # image 1 will be the rotated one: displayed 30 x 40
    write_rotated_jpeg(img_dir / "1.jpg")
    msg = refused(tmp_path, BadImageError, r"1\.jpg.*decodes to 30x40.*gives 40x30", CocoDetection, img_dir, ann,
                  on_bad_image="fail")  # fmt: skip
    assert "id 1" in msg and "on_bad_image=skip" in msg
    ds = CocoDetection(img_dir, ann, on_bad_image="skip")
    skipped = ds[0]
    assert isinstance(skipped, SkippedImage) and skipped.image_id == 1 and "decodes to 30x40" in skipped.error
    assert not isinstance(ds[1], SkippedImage)


def test_every_train_image_missing_or_undecodable_is_refused_under_skip(tmp_path):
    img_dir, ann = write_coco(tmp_path / "missing")
    for p in img_dir.iterdir():
        p.unlink()
    refused(tmp_path, FileNotFoundError, r"every image of .*instances.json missing from .*images.*'1.jpg'",
            CocoDetection, img_dir, ann, on_bad_image="skip")  # fmt: skip
    img_dir, ann = write_coco(tmp_path / "broken")
    for p in img_dir.iterdir():
        p.write_bytes(b"not an image")
    refused(tmp_path, BadImageError, r"every image of .*instances.json unusable; the first: image .*1\.jpg",
            CocoDetection, img_dir, ann, on_bad_image="skip")  # fmt: skip


def test_large_split_with_all_sampled_images_broken_is_refused(tmp_path):
    img_dir, ann = write_coco(tmp_path, n=20)
    for p in img_dir.iterdir():
        p.write_bytes(b"not an image")
    refused(tmp_path, BadImageError, r"all 16 images tried \(evenly spaced\) of .* unusable", CocoDetection,
            img_dir, ann)  # fmt: skip


def test_some_missing_images_fail_or_are_skipped_and_counted(tmp_path, caplog):
    img_dir, ann = write_coco(tmp_path, n=4)
    (img_dir / "3.jpg").unlink()
    refused(tmp_path, FileNotFoundError, r"1 of 4 images of .* missing .*'3.jpg'.*on_bad_image=skip", CocoDetection,
            img_dir, ann, on_bad_image="fail")  # fmt: skip
    with caplog.at_level("WARNING", logger="detection.data"):
        ds = CocoDetection(img_dir, ann, on_bad_image="skip")
    assert "1 of 4 images missing ('3.jpg')" in caplog.text
    assert isinstance(ds[2], SkippedImage) and ds[2].image_id == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_box_size": -50}, r"min_box_size=-50 is not valid; use a side > 0 in pixels"),
        ({"min_box_size": 0}, r"min_box_size=0 is not valid"),  # would keep zero-width boxes: torchvision asserts
        ({"probe_images": -1}, r"probe_images=-1 is not valid; use an integer >= 0"),
    ],
)
def test_dataset_options_out_of_range_are_named(tmp_path, kwargs, match):
    img_dir, ann = write_coco(tmp_path)
    refused(tmp_path, ValueError, match, CocoDetection, img_dir, ann, **kwargs)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((0, 1333), ValueError, r"min_size=0 is not valid; use an integer >= 1"),
        ((800, 600), ValueError, r"max_size=600 is not valid; use an integer >= 800"),
        (("800", None), TypeError, r"min_size='800' is not valid \(str\)"),
    ],
)
def test_transform_sizes_out_of_range_are_named(args, exc, match):
    with pytest.raises(exc, match=match):
        build_transforms(True, *args)
    with pytest.raises(ValueError, match=r"hflip=2 is not valid; use a flip probability in \[0, 1\]"):
        build_transforms(True, 800, 1333, hflip=2)


# ---- classification: ImageFolder ------------------------------------------------------------------------------------
def image_folder(root: Path, per_class: int = 2, splits=("train", "val")) -> dict:
    for split in splits:
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("RGB", (24, 24), (60 * j, 90, 30)).save(root / split / c / f"{j}.jpg")
    return {"task": "classification", "name": "imagefolder", "root": str(root)}


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_every_imagefolder_image_undecodable_names_the_split_folder(tmp_path, policy):
    cfg = image_folder(tmp_path)
    for p in (tmp_path / "val").rglob("*.jpg"):
        p.write_bytes(b"\xff\xd8 not a jpeg")
    msg = refused(tmp_path, ClsBadImageError, r"split folder .*val'? yields no image: PIL cannot decode any of its 4",
                  build_datasets, {**cfg, "bad_images": policy}, CARD)  # fmt: skip
    assert str(tmp_path / "val") in msg


@pytest.mark.parametrize("split", ["train", "val"])
def test_empty_imagefolder_split_names_the_folder(tmp_path, split):
    cfg = image_folder(tmp_path, splits=("train", "val"))
    for c in ("cat", "dog"):
        for p in (tmp_path / split / c).iterdir():
            p.unlink()
        (tmp_path / split / c).rmdir()
    refused(tmp_path, ValueError, rf"{split}'? has no class folders", build_datasets, cfg, CARD)


def test_imagefolder_with_some_undecodable_images_is_recovered_under_skip(tmp_path, caplog):
    cfg = image_folder(tmp_path, per_class=3)
    (tmp_path / "train" / "dog" / "1.jpg").write_bytes(b"broken")
    refused(tmp_path, ClsBadImageError, r"dog/1\.jpg.*bad_images=skip", build_datasets, cfg, CARD)
    with caplog.at_level("WARNING", logger="classification.data"):
        data = build_datasets({**cfg, "bad_images": "skip"}, CARD)
    assert "1 of 6 images probed do not decode" in caplog.text and len(data.train) == 6


# ---- Python API -----------------------------------------------------------------------------------------------------
def test_model_name_must_be_a_string():
    with pytest.raises(TypeError, match=r"model name 123 \(int\) is not valid; give a registered name as a string"):
        backbones.create_model(123)


@pytest.mark.parametrize("name", backbones.list_models())  # refused before any layer is built: cheap for all
def test_num_classes_and_in_chans_checked_for_every_family(name):
    with pytest.raises(TypeError, match=r"num_classes='10' is not valid \(str\); use an integer >= 0"):
        backbones.create_model(name, num_classes="10")
    with pytest.raises(ValueError, match=r"num_classes=-3 is not valid; use an integer >= 0 \(0 = no classifier"):
        backbones.create_model(name, num_classes=-3)
    with pytest.raises(TypeError, match=r"num_classes=True is not valid \(bool\)"):
        backbones.create_model(name, num_classes=True)
    with pytest.raises(ValueError, match=r"in_chans=0 is not valid; use an integer >= 1"):
        backbones.create_model(name, in_chans=0)


@pytest.mark.parametrize(
    "levels, match",
    [
        (["cX"], r"detector.levels=\['cX'\] is not valid; 'cX' is not a level name"),
        ([], r"detector.levels=\[\] is not valid; give at least one level"),
        ("c4", r"detector.levels='c4' is not valid; give a list of level names, e.g. \['c3', 'c4', 'c5'\]"),
        (["c5", "c4"], r"detector.levels=\['c5', 'c4'\] is not valid; list each level once, in increasing stride"),
    ],
)
@pytest.mark.parametrize("detector", ["faster_rcnn", "ssd"])
def test_detector_levels_are_named(detector, levels, match):
    with pytest.raises(ValueError, match=match):
        build_detector("mobilenet_v1_x0_25", {"name": detector, "levels": levels}, num_classes=3)


def test_features_only_input_too_small_names_the_minimum_side():
    f = backbones.create_model("mobilenet_v1_x0_25", features_only=True)
    with pytest.raises(ValueError, match=r"input of 16x16 px is too small .* level c5 has stride 32, so each side "
                                         r"must be at least 32 px"):  # fmt: skip
        f(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"input of 64x16 px"):
        f(torch.randn(2, 3, 64, 16))
    assert f(torch.randn(2, 3, 32, 32))["c5"].shape[-2:] == (1, 1)  # the minimum itself runs
    shallow = backbones.create_model("mobilenet_v1_x0_25", features_only=True, out_features=("c2", "c3"))
    with pytest.raises(ValueError, match=r"level c3 has stride 8, so each side must be at least 8 px"):
        shallow(torch.randn(2, 3, 4, 4))
    assert shallow(torch.randn(2, 3, 8, 8))["c3"].shape[-2:] == (1, 1)


def test_input_too_small_for_the_nasnet_executor():
    """NASNet overrides ``forward``; the same check runs (the minimum is its deepest stride, 4 on CIFAR)."""
    f = backbones.create_model("nasnet_a_cifar", features_only=True)
    assert max(f.out_strides.values()) == 4
    with pytest.raises(ValueError, match=r"input of 2x2 px is too small for nasnet_a_cifar .* at least 4 px"):
        f(torch.randn(2, 3, 2, 2))


@pytest.mark.slow
def test_input_check_keeps_jit_trace_exact():
    f = backbones.create_model("mobilenet_v1_x0_25", features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(f, x, strict=False, check_trace=False)
        for k, v in f(x).items():
            torch.testing.assert_close(traced(x)[k], v)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v1_x0_25", "nasnet_a_cifar"])
def test_input_check_keeps_torch_export_exact(name):
    f = backbones.create_model(name, features_only=True).eval()
    side = 64 if backbones.model_card(name).detection_ready else 32
    x = torch.randn(1, 3, side, side)
    exported = torch.export.export(f, (x,)).module()
    with torch.no_grad():
        for k, v in f(x).items():
            torch.testing.assert_close(exported(x)[k], v)


# ---- tools ----------------------------------------------------------------------------------------------------------
def tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_skips_a_corrupt_image_naming_it_and_counts_it(tmp_path, caplog):
    img_dir, ann = write_coco(tmp_path, n=3)
    (img_dir / "2.jpg").write_bytes(b"corrupt")
    with caplog.at_level("WARNING", logger="detection.visualize"):
        report = draw_dataset(ann, img_dir, tmp_path / "out", limit=0)
    assert "2.jpg" in caplog.text and len(report.skipped) == 1 and "2.jpg" in report.skipped[0]
    assert (
        sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.png", "3.png"] == [p.name for p in report.written]
    )


def test_visualize_exits_non_zero_when_nothing_could_be_drawn(tmp_path, capsys):
    img_dir, ann = write_coco(tmp_path, n=2)
    for p in img_dir.iterdir():
        p.write_bytes(b"corrupt")
    before = snapshot(tmp_path)
    code = tool("visualize").main(["--ann", str(ann), "--images", str(img_dir), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1 and "wrote 0 images" in out and "skipped 2 that could not be read" in out
    assert snapshot(tmp_path) == before  # no output folder was created


def test_visualize_same_stem_in_two_folders_gives_two_files(tmp_path):
    img_dir, ann = write_coco(tmp_path, n=2)
    for i, sub in ((1, "a"), (2, "b")):
        (img_dir / sub).mkdir()
        (img_dir / f"{i}.jpg").rename(img_dir / sub / "frame.jpg")
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"], data["images"][1]["file_name"] = "a/frame.jpg", "b/frame.jpg"
    ann.write_text(json.dumps(data))
    report = draw_dataset(ann, img_dir, tmp_path / "out", limit=0)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["frame_1.png", "frame_2.png"] and len(report.written) == len(files)


@pytest.mark.parametrize(
    "results, match",
    [
        ({"annotations": []}, r"results.json is not COCO results: the top level is a dict"),
        ([{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}], r"entry \[0\] has no 'category_id'"),
        ([{"image_id": 1, "category_id": 1, "bbox": [1, 2], "score": 0.9}], r"entry \[0\] has bbox=\[1, 2\]"),
        (
            [{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}],
            r"image_ids \[7\] are not in .*instances.json's 'images'",
        ),
        ([{"image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4], "score": 0.9}], r"category_ids \[4\] are not in"),
        ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}], r"entry \[0\] has score='high'"),
    ],
)
def test_visualize_results_file_errors_are_one_message(tmp_path, capsys, results, match):
    img_dir, ann = write_coco(tmp_path, n=2)
    (tmp_path / "results.json").write_text(json.dumps(results))
    before = snapshot(tmp_path)
    argv = ["--ann", str(ann), "--images", str(img_dir), "--results", str(tmp_path / "results.json"), "--out",
            str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        tool("visualize").main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and re.search(match, err), err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--limit", "-1"], "limit=-1 is not valid; use an integer >= 0 (0 = every image)"),
        (["--score", "1.5"], "score=1.5 is not valid; use a score threshold in [0, 1]"),
    ],
)
def test_visualize_out_of_range_arguments_are_refused_naming_the_range(tmp_path, capsys, args, message):
    img_dir, ann = write_coco(tmp_path, n=1)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        tool("visualize").main(["--ann", str(ann), "--images", str(img_dir), "--out", str(tmp_path / "o"), *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modes", "foo"], "modes='foo' is not valid; choose one of 'forward', 'train'"),
        (["--modes", "forward,trian"], "modes='trian' is not valid (did you mean 'train'?)"),
        (["--batch-size", "0"], "batch_size=0 is not valid; use an integer >= 1"),
        (["--repeats", "0"], "repeats=0 is not valid; use an integer >= 1"),
        (["--warmup", "-1"], "warmup=-1 is not valid; use an integer >= 0"),
        (["--baseline", "mobilenet_v1_x0_3"], "unknown model 'mobilenet_v1_x0_3' (did you mean 'mobilenet_v1_x0_5'"),
    ],
)
def test_benchmark_arguments_refused_before_any_timing(capsys, monkeypatch, args, message):
    bench = tool("benchmark")

    def no_timing(*a, **k):
        raise AssertionError("compare() ran: a refused argument was timed")

    monkeypatch.setattr(bench, "compare", no_timing)
    with pytest.raises(SystemExit) as info:
        bench.main(["mobilenet_v1_x0_25", *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
