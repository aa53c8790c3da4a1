"""Detection data and evaluation: the synthetic set, COCO-format parsing and its bad input, transforms, batching,
COCOeval (pycocotools vs faster_coco_eval) and gathering across ranks."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from detection.data import (
    AnnotationFormatError,
    CocoDetection,
    GroupedBatchSampler,
    RandomHorizontalFlip,
    Resize,
    ShardSampler,
    SkippedImage,
    aspect_ratio_groups,
    collate,
    load_coco_json,
)
from detection.evaluation import STAT_NAMES, CocoEvaluator, evaluate_results, to_coco_results
from detection.synthetic import CLASSES, ShapesSpec, dataset_dir, ensure_shapes

SPEC = ShapesSpec(num_train=24, num_val=12, empty_fraction=0.2, seed=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("cache"), SPEC)


# ---- synthetic shapes -----------------------------------------------------------------------------------------------
def test_shapes_is_deterministic_and_reused(shapes, tmp_path):
    other = ensure_shapes(tmp_path, SPEC)
    for rel in ("annotations/instances_train.json", "annotations/instances_val.json", "train/000005.png"):
        assert (shapes / rel).read_bytes() == (other / rel).read_bytes(), rel
    stamp = (other / "annotations" / "instances_val.json").stat().st_mtime_ns
    assert ensure_shapes(tmp_path, SPEC) == other  # second call: reused, not regenerated
    assert (other / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [other.name]  # no temporary folder left behind
    assert dataset_dir(tmp_path, ShapesSpec(seed=4)) != other  # another spec, another folder


def test_shapes_content(shapes):
    data = load_coco_json(shapes / "annotations" / "instances_train.json")
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    per_image = {img["id"]: [] for img in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a)
    assert any(not anns for anns in per_image.values()), "some images are empty"
    assert len({a["category_id"] for a in data["annotations"]}) == len(CLASSES)
    sides = [max(a["bbox"][2:]) for a in data["annotations"]]
    assert min(sides) < 30 and max(sides) > 45, "objects of varying size"
    assert len({(img["width"], img["height"]) for img in data["images"]}) > 1, "images of varying size"
    occluded = [a for a in data["annotations"] if a["area"] < 0.95 * _shape_area(a)]
    assert occluded, "some objects are partly hidden by others"
    for img in data["images"]:
        with Image.open(shapes / "train" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])


def _shape_area(a) -> float:
    w, h = a["bbox"][2:]
    return {1: np.pi / 4, 2: 1.0, 3: 0.5, 4: 5 / 9}[a["category_id"]] * w * h


def test_shapes_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    import detection.synthetic as synthetic

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(tmp_path, SPEC)
    assert list(tmp_path.iterdir()) == []


# ---- COCO-format dataset ------------------------------------------------------------------------------------------
def _write_coco(root: Path, bad_image: bool = False) -> tuple[Path, Path]:
    """Three images, categories with COCO-style gaps (3, 7, 90), a crowd box and two degenerate boxes."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    for i in (1, 2, 3):
        Image.fromarray(np.full((40, 60, 3), 30 * i, dtype=np.uint8)).save(img_dir / f"{i}.jpg")
    if bad_image:
        (img_dir / "3.jpg").write_bytes(b"this is not a jpeg")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [30, 10, 10, 20], "area": 200, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 1},
        {"id": 4, "image_id": 3, "category_id": 3, "bbox": [10, 10, 0, 5], "area": 0, "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 3, "category_id": 3, "bbox": [70, 10, 5, 5], "area": 25, "iscrowd": 0},  # outside
        {"id": 6, "image_id": 3, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
    ]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 60, "height": 40} for i in (1, 2, 3)],
        "annotations": anns,
        "categories": [{"id": c, "name": f"cat{c}"} for c in (90, 3, 7)],
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(coco))
    return img_dir, ann


def test_category_mapping_crowd_and_degenerate(tmp_path, caplog):
    img_dir, ann = _write_coco(tmp_path)
    with caplog.at_level("INFO", logger="detection.data"):
        ds = CocoDetection(img_dir, ann)
    assert "dropped 2 degenerate boxes" in caplog.text and "1 crowd boxes" in caplog.text  # what the user sees
    assert ds.label_to_cat == {1: 3, 2: 7, 3: 90} and ds.num_classes == 3
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.float32 and image.max() <= 1
    assert target["labels"].tolist() == [2, 3]
    assert target["boxes"].tolist() == [[5, 5, 25, 15], [30, 10, 40, 30]]  # xywh -> xyxy
    _, target2 = ds[1]
    assert len(target2["boxes"]) == 0  # the crowd box is no training target
    _, target3 = ds[2]
    assert target3["boxes"].tolist() == [[1, 2, 4, 6]]  # the two degenerate boxes are dropped
    assert ds.num_crowd == 1 and ds.num_degenerate == 2
    # the crowd box stays in the file the evaluation reads: a detection on it is ignored, not a false positive
    perfect = [
        {"image_id": 1, "category_id": c, "bbox": b, "score": 0.5}
        for c, b in ((7, [5, 5, 20, 10]), (90, [30, 10, 10, 20]))
    ]
    on_crowd = {"image_id": 2, "category_id": 7, "bbox": [1, 1, 28, 28], "score": 0.9}
    assert evaluate_results(ann, [*perfect, on_crowd], [1, 2])["AP"] == pytest.approx(1.0)


def test_undecodable_image_skip_and_fail(tmp_path):
    img_dir, ann = _write_coco(tmp_path, bad_image=True)
    skipped = CocoDetection(img_dir, ann, on_bad_image="skip")[2]
    assert isinstance(skipped, SkippedImage) and skipped.image_id == 3 and skipped.path.endswith("3.jpg")
    images, targets, ids = collate([CocoDetection(img_dir, ann)[0], skipped])
    assert len(images) == len(targets) == 1 and ids == [3]
    with pytest.raises(RuntimeError, match=r"3\.jpg.*could not be decoded"):
        CocoDetection(img_dir, ann, on_bad_image="fail")  # at construction: the probe decodes all 3 images
    with pytest.raises(RuntimeError, match=r"3\.jpg.*could not be decoded"):
        CocoDetection(img_dir, ann, on_bad_image="fail", probe_images=0)[2]  # when loaded
    with pytest.raises(ValueError, match="on_bad_image='ignore'.*skip, fail"):
        CocoDetection(img_dir, ann, on_bad_image="ignore")


def test_missing_paths_are_named(tmp_path):
    img_dir, ann = _write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        CocoDetection(tmp_path / "nope", ann)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(img_dir, tmp_path / "missing.json")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("annotations"), "the top level has no 'annotations' key"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\] has no 'file_name' key"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] has no 'bbox' key"),
        (lambda d: d["categories"][0].pop("id"), r"categories\[0\] has no 'id' key"),
        (
            lambda d: d["annotations"][0].update(category_id=5),
            r"annotation ids 1 use category_id 5 missing from 'categories'",
        ),
        (lambda d: d["annotations"][0].update(bbox=[1, 2]), r"annotation id 1 has bbox \[1, 2\]"),
    ],
)
def test_not_coco_names_the_missing_key(tmp_path, mutate, message):
    img_dir, ann = _write_coco(tmp_path)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(AnnotationFormatError, match=message):
        CocoDetection(img_dir, ann)


def test_json_that_is_not_coco(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(AnnotationFormatError, match="list.json.*not a COCO annotation file"):
        load_coco_json(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(AnnotationFormatError, match="broken.json is not valid JSON"):
        load_coco_json(tmp_path / "broken.json")


# ---- transforms and batching -----------------------------------------------------------------------------------------
def test_resize_and_flip_move_boxes():
    image = Image.new("RGB", (60, 40))
    target = {"boxes": torch.tensor([[6.0, 4.0, 30.0, 20.0]]), "scale": 1.0}
    image, target = Resize(80, 100)(image, target)  # shorter side 40 -> 80 (longer 120 > 100: capped at 100)
    assert image.size == (100, 67)
    assert target["scale"] == pytest.approx(100 / 60)
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 4 * 67 / 40, 50.0, 20 * 67 / 40]]))
    image, target = RandomHorizontalFlip(1.0)(image, {"boxes": torch.tensor([[10.0, 5.0, 50.0, 9.0]])})
    assert target["boxes"].tolist() == [[50.0, 5.0, 90.0, 9.0]]


def test_grouped_batches():
    groups = [0, 1] * 10 + [0] * 3  # 13 of group 0, 10 of group 1
    batches = list(GroupedBatchSampler(range(23), groups, batch_size=4))
    assert len(batches) == len(GroupedBatchSampler(range(23), groups, 4)) == 6
    assert sorted(i for b in batches for i in b) == list(range(23))
    full = [b for b in batches if len(b) == 4]
    assert sum(len({groups[i] for i in b}) == 1 for b in full) >= 4  # all but the remainders are one group
    assert len(list(GroupedBatchSampler(range(23), groups, 4, drop_last=True))) == 5


def test_grouped_batches_shard_evenly_across_ranks(shapes):
    from torch.utils.data.distributed import DistributedSampler

    ds = CocoDetection(shapes / "train", shapes / "annotations" / "instances_train.json")
    groups = aspect_ratio_groups(ds, 3)
    assert len(set(groups)) > 1
    counts = []
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=0)
        counts.append(len(list(GroupedBatchSampler(sampler, groups, 4))))
    assert len(set(counts)) == 1  # same number of steps on every rank, or DDP would hang


def test_shard_sampler_sees_each_image_once():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))


# ---- evaluation ------------------------------------------------------------------------------------------------------
def _noisy(ann_file: Path, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    data = json.loads(ann_file.read_text())
    cats = [c["id"] for c in data["categories"]]
    out = []
    for a in data["annotations"]:
        cat = rng.choice(cats) if rng.random() < 0.2 else a["category_id"]
        out.append({"image_id": a["image_id"], "category_id": cat, "score": rng.random(),
                    "bbox": [max(0.0, v + rng.gauss(0, 2)) for v in a["bbox"]]})  # fmt: skip
    return out


def test_perfect_predictions_score_one(shapes):
    ann = shapes / "annotations" / "instances_val.json"
    gt = json.loads(ann.read_text())["annotations"]
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in gt
    ]
    stats = evaluate_results(ann, results)
    assert list(stats) == list(STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


def test_backends_agree_on_all_12_stats(shapes):
    ann = shapes / "annotations" / "instances_val.json"
    results = _noisy(ann)
    a = evaluate_results(ann, results, backend="pycocotools")
    b = evaluate_results(ann, results, backend="faster_coco_eval")
    assert 0.1 < a["AP"] < 0.9
    for name in STAT_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-6), name


def test_no_detections_is_zero_not_a_crash(shapes):
    ann = shapes / "annotations" / "instances_val.json"
    for backend in ("pycocotools", "faster_coco_eval"):
        stats = evaluate_results(ann, [], backend=backend)
        assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_unknown_backend_and_image_ids(shapes):
    ann = shapes / "annotations" / "instances_val.json"
    with pytest.raises(ValueError, match="backend 'fast'.*pycocotools, faster_coco_eval"):
        evaluate_results(ann, [], backend="fast")
    with pytest.raises(ValueError, match=r"image ids \[9999\]"):
        evaluate_results(ann, [], [9999])


def test_results_are_xywh_in_original_pixels_with_category_ids():
    out = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([2])}  # fmt: skip
    (r,) = to_coco_results(7, out, {1: 3, 2: 90}, scale=2.0)
    assert r == {"image_id": 7, "category_id": 90, "bbox": [5.0, 10.0, 10.0, 20.0], "score": 0.5}


def test_evaluator_counts_each_image_once_and_skipped_as_missed(shapes, tmp_path, caplog):
    ann = shapes / "annotations" / "instances_val.json"
    gt = json.loads(ann.read_text())
    ev = CocoEvaluator(ann, {k + 1: k + 1 for k in range(len(CLASSES))})
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)  # fmt: skip
        out = {
            "boxes": boxes,
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([a["category_id"] for a in anns]),
        }
        ev.update([{"image_id": img["id"], "scale": 1.0}], [out])
        ev.update([{"image_id": img["id"], "scale": 1.0}], [out])  # a padded sampler repeats an image
    assert ev.evaluate(tmp_path / "results.json")["AP"] == pytest.approx(1.0)
    assert len(json.loads((tmp_path / "results.json").read_text())) == len(gt["annotations"])
    # an undecodable image (seen, no predictions) with objects counts as missed
    first_with_objects = next(a["image_id"] for a in gt["annotations"])
    ev.results.pop(first_with_objects)
    ev.mark_seen([first_with_objects])
    with caplog.at_level("WARNING", logger="detection.evaluation"):
        assert ev.evaluate()["AR100"] < 1.0
    assert (
        f"1 evaluated image(s) could not be decoded and count as images with no detections (ids [{first_with_objects}]"
        in caplog.text
    )


def _gather_worker(rank: int, world: int, port: int, ann: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    data = json.loads(Path(ann).read_text())
    ev = CocoEvaluator(ann, {k + 1: k + 1 for k in range(len(CLASSES))})
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    for i in ShardSampler(len(data["images"]), rank, world):
        ev.update([{"image_id": data["images"][i]["id"], "scale": 1.0}], [empty])
    results, ids = ev.gather()
    Path(f"{out}.{rank}").write_text(json.dumps(ids))
    torch.distributed.destroy_process_group()


def test_gather_across_two_ranks(shapes, tmp_path):
    """Under DDP every val image is evaluated exactly once: the ranks' image ids are gathered and merged."""
    import torch.multiprocessing as mp

    ann = shapes / "annotations" / "instances_val.json"
    mp.spawn(_gather_worker, args=(2, free_port(), str(ann), str(tmp_path / "ids")), nprocs=2, join=True)
    expected = sorted(img["id"] for img in json.loads(ann.read_text())["images"])
    for rank in range(2):
        assert json.loads((tmp_path / f"ids.{rank}").read_text()) == expected


def test_visualize_draws_ground_truth_and_predictions(shapes, tmp_path):
    import subprocess
    import sys

    from detection.visualize import GT_COLOUR, draw_dataset

    ann = shapes / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    a = data["annotations"][0]
    img = next(i for i in data["images"] if i["id"] == a["image_id"])
    (path,) = [
        p for p in draw_dataset(ann, shapes / "val", tmp_path / "gt", limit=0).written if p.stem in img["file_name"]
    ]
    x, y = int(a["bbox"][0]), int(a["bbox"][1] + a["bbox"][3] / 2)
    assert Image.open(path).getpixel((x, y)) == GT_COLOUR  # the box's left edge
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}]))
    script = Path(__file__).resolve().parents[1] / "tools" / "visualize.py"
    cmd = [sys.executable, str(script), "--ann", str(ann), "--images", str(shapes / "val"), "--results", str(results),
           "--out", str(tmp_path / "pred"), "--limit", "0"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    drawn = Image.open(tmp_path / "pred" / path.name).getpixel((x, y))
    assert drawn != GT_COLOUR and drawn != Image.open(shapes / "val" / img["file_name"]).convert("RGB").getpixel((x, y))
