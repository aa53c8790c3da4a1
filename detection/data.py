"""COCO-format detection data: any annotation JSON + image folder.

* Category ids (COCO's run 1..90 with gaps) are mapped to contiguous labels 1..K (0 is torchvision's background)
  and back (:attr:`CocoDetection.label_to_cat`) for evaluation.
* Crowd boxes (``iscrowd=1``) are not training targets; they stay in the annotation file, where COCOeval uses them
  as ignore regions.
* Degenerate boxes (width or height below ``min_box_size`` after clipping to the image) are dropped and counted.
* An image that fails to decode is named; ``on_bad_image="skip"`` leaves it out of the batch and counts it,
  ``"fail"`` raises.
* Transforms (resize with the shorter side to ``min_size`` capped by ``max_size``, horizontal flip) run in the
  loader workers; ``target["scale"]`` maps predictions back to the original image for evaluation.
* :class:`GroupedBatchSampler` batches images of similar aspect ratio (less padding); it shards across ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "fail")


class AnnotationFormatError(ValueError):
    """The annotation JSON is not COCO-format; the message names the file and the missing key."""


@dataclass(frozen=True)
class SkippedImage:
    """Stands in for an image that failed to decode (``on_bad_image="skip"``); the collate counts it."""

    image_id: int
    path: str
    error: str


def _require(obj: Any, key: str, where: str, path: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise AnnotationFormatError(f"{path} is not a COCO annotation file: {where} has no {key!r} key")
    return obj[key]


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a COCO annotation file: ``images`` (id, file_name), ``annotations`` (image_id, bbox,
    category_id) and ``categories`` (id) must be there."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file {path!r} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{path} is not a COCO annotation file: the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(_require(data, key, "the top level", path), list):
            raise AnnotationFormatError(f"{path}: {key!r} must be a list")
    for i, img in enumerate(data["images"]):
        for key in ("id", "file_name"):
            _require(img, key, f"images[{i}]", path)
    for i, ann in enumerate(data["annotations"]):
        for key in ("image_id", "bbox", "category_id"):
            _require(ann, key, f"annotations[{i}]", path)
    for i, cat in enumerate(data["categories"]):
        _require(cat, "id", f"categories[{i}]", path)
    return data


class CocoDetection(Dataset):
    """Images of a COCO-format annotation file with their boxes (xyxy, absolute pixels) and contiguous labels.

    Args:
        image_dir: folder the ``file_name`` entries are relative to.
        ann_file: COCO annotation JSON.
        transforms: callable ``(PIL image, target) -> (tensor image, target)``; None = to tensor only.
        on_bad_image: ``"skip"`` (leave out and count) or ``"fail"`` (raise naming the file).
        min_box_size: boxes narrower or lower than this (pixels, after clipping) are dropped and counted.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Any = None,
        on_bad_image: str = "skip",
        min_box_size: float = 1.0,
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"on_bad_image={on_bad_image!r} is not valid; choose one of {', '.join(BAD_IMAGE_POLICIES)}"
            )
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {os.fspath(self.image_dir)!r} does not exist")
        self.ann_file = os.fspath(ann_file)
        data = load_coco_json(ann_file)
        self.transforms = transforms
        self.on_bad_image = on_bad_image
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_cat = {k + 1: c["id"] for k, c in enumerate(self.categories)}
        self.cat_to_label = {c: k for k, c in self.label_to_cat.items()}
        self.class_names = [c.get("name", str(c["id"])) for c in self.categories]
        self.images = list(data["images"])
        by_image: dict[Any, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        self.num_degenerate = 0
        self.num_crowd = 0
        self.num_boxes = 0
        unknown_cats: set[Any] = set()
        self._targets: list[tuple[np.ndarray, np.ndarray]] = []
        for img in self.images:
            boxes, labels = [], []
            for ann in by_image.get(img["id"], []):
                if ann.get("iscrowd", 0):
                    self.num_crowd += 1
                    continue
                if ann["category_id"] not in self.cat_to_label:
                    unknown_cats.add(ann["category_id"])
                    continue
                try:
                    x, y, w, h = (float(v) for v in ann["bbox"])
                except (TypeError, ValueError) as e:
                    raise AnnotationFormatError(
                        f"{self.ann_file}: annotation id {ann.get('id')} has bbox {ann['bbox']!r}, not [x, y, w, h]"
                    ) from e
                x0, y0, x1, y1 = x, y, x + w, y + h
                if "width" in img and "height" in img:
                    x0, x1 = min(max(x0, 0.0), img["width"]), min(max(x1, 0.0), img["width"])
                    y0, y1 = min(max(y0, 0.0), img["height"]), min(max(y1, 0.0), img["height"])
                if not (x1 - x0 >= min_box_size and y1 - y0 >= min_box_size):
                    self.num_degenerate += 1
                    continue
                boxes.append((x0, y0, x1, y1))
                labels.append(self.cat_to_label[ann["category_id"]])
            self.num_boxes += len(boxes)
            self._targets.append(
                (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))
            )
        if unknown_cats:
            raise AnnotationFormatError(
                f"{self.ann_file}: annotations use category ids {sorted(unknown_cats)[:10]} missing from 'categories'"
            )
        logger.info(
            "%s: %d images, %d boxes, %d classes; dropped %d degenerate boxes (side < %g px), %d crowd boxes not "
            "used as training targets",
            self.ann_file,
            len(self.images),
            self.num_boxes,
            len(self.categories),
            self.num_degenerate,
            min_box_size,
            self.num_crowd,
        )

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def aspect_ratio(self, index: int) -> float:
        """Width / height, from the JSON when it has the sizes, else from the image header."""
        img = self.images[index]
        if "width" in img and "height" in img:
            return img["width"] / img["height"]
        try:
            with Image.open(self.image_path(index)) as im:
                return im.width / im.height
        except OSError:
            return 1.0

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | SkippedImage:
        info = self.images[index]
        path = self.image_path(index)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if self.on_bad_image == "fail":
                raise RuntimeError(f"image {os.fspath(path)!r} (id {info['id']}) could not be decoded: {e}") from e
            logger.warning("skipping image %s (id %s): it could not be decoded: %s", path, info["id"], e)
            return SkippedImage(info["id"], os.fspath(path), str(e))
        boxes, labels = self._targets[index]
        target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": info["id"],
            "orig_size": (image.height, image.width),
            "scale": 1.0,
        }
        if self.transforms is not None:
            return self.transforms(image, target)
        return to_tensor(image), target


def to_tensor(image: Image.Image) -> Tensor:
    """(3, H, W) float in [0, 1]."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div_(255.0)


class Resize:
    """Shorter side to ``min_size`` unless the longer side would pass ``max_size`` (torchvision's rule)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Image.Image, target: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
        w, h = image.size
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        if abs(scale - 1.0) > 1e-6:
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            image = image.resize((nw, nh), Image.BILINEAR)
            target["boxes"] = target["boxes"] * torch.tensor([nw / w, nh / h, nw / w, nh / h])
            target["scale"] = target["scale"] * scale
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image, target: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
        if self.p > 0 and torch.rand(()).item() < self.p:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = image.width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image, target


class Compose:
    """Apply PIL-level transforms in order, then convert to a tensor."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        for t in self.transforms:
            image, target = t(image, target)
        return to_tensor(image), target


def build_transforms(train: bool, min_size: int | None, max_size: int | None, hflip: float = 0.5) -> Compose:
    ts: list[Any] = []
    if min_size:
        ts.append(Resize(min_size, max_size or min_size))
    if train and hflip > 0:
        ts.append(RandomHorizontalFlip(hflip))
    return Compose(ts)


def collate(batch: list[Any]) -> tuple[list[Tensor], list[dict[str, Any]], list[int]]:
    """``(images, targets, skipped image ids)``; images keep their own sizes (the detector pads them)."""
    images, targets, skipped = [], [], []
    for item in batch:
        if isinstance(item, SkippedImage):
            skipped.append(item.image_id)
            continue
        images.append(item[0])
        targets.append(item[1])
    return images, targets, skipped


def aspect_ratio_groups(dataset: CocoDetection, k: int = 3) -> list[int]:
    """Group index per image: aspect ratios binned at ``2 ** linspace(-1, 1, 2k + 1)`` (k=0: one group)."""
    if k <= 0:
        return [0] * len(dataset)
    bins = 2.0 ** np.linspace(-1, 1, 2 * k + 1)
    ratios = np.array([dataset.aspect_ratio(i) for i in range(len(dataset))])
    return np.digitize(ratios, bins).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share an aspect-ratio group; the remainders of all groups are batched together.

    Every batch is full except possibly the last, so there are ``ceil(len(sampler) / batch_size)`` batches
    (``floor`` with ``drop_last``) - the same count on every rank when ``sampler`` is a ``DistributedSampler``.
    ``set_epoch`` is forwarded to the sampler (Lightning calls it on ``batch_sampler.sampler``).
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for idx in self.sampler:
            buf = buffers[self.group_ids[idx]]
            buf.append(idx)
            if len(buf) == self.batch_size:
                yield list(buf)
                buf.clear()
        rest = [i for buf in buffers.values() for i in buf]
        for start in range(0, len(rest), self.batch_size):
            chunk = rest[start : start + self.batch_size]
            if len(chunk) == self.batch_size or not self.drop_last:
                yield chunk

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order, no padding: each image is seen by exactly one rank."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
