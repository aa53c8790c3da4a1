"""COCO-format detection data: any annotation JSON + image folder.

* Category ids (COCO's run 1..90 with gaps) are mapped to contiguous labels 1..K (0 is torchvision's background)
  and back (:attr:`CocoDetection.label_to_cat`) for evaluation.
* Crowd boxes (``iscrowd=1``) are not training targets; they stay in the annotation file, where COCOeval uses them
  as ignore regions.
* Degenerate boxes (width or height below ``min_box_size`` after clipping to the image) are dropped and counted.
* The annotation file is checked before anything else (:func:`load_coco_json`): integer and unique ids, every
  annotation's image and category present, UTF-8 JSON; what would be read wrongly is refused naming the ids.
* Images decode as displayed (EXIF orientation applied) and 16-bit grey is scaled to 8 bits (:func:`read_image`).
* An image that is missing, fails to decode or decodes to another size than the annotation's width x height is
  named; ``on_bad_image="skip"`` leaves it out of the batch and counts it, ``"fail"`` raises. A split with no
  image, or whose images are all missing or unusable, is refused at construction (:meth:`CocoDetection.check_images`).
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
from PIL import ExifTags, Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from backbones.checks import check, check_int

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "fail")
#: ids and sides a COCO file holds as integers (pycocotools and our evaluation index images and categories by them)
_INT_FIELDS = {
    "images": ("id",),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id",),
}
_SHOWN = 10  # ids named in a message before "... (N in all)"


class AnnotationFormatError(ValueError):
    """The annotation JSON is not COCO-format; the message names the file and the entries at fault."""


class BadImageError(RuntimeError):
    """An image that cannot be used: it does not decode, or its decoded size is not the annotation's."""


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


def _listed(values: Sequence[Any], show: Any = repr) -> str:
    """The first few values, and how many there are when not all are shown."""
    head = ", ".join(map(show, values[:_SHOWN]))
    return head + (f", ... ({len(values)} in all)" if len(values) > _SHOWN else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _duplicates(values: Sequence[Any]) -> list[Any]:
    seen: set[Any] = set()
    dup: list[Any] = []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


def read_json(path: str) -> Any:
    """Parse a JSON file; :class:`AnnotationFormatError` naming it when it is not UTF-8 or not JSON."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw)  # bytes: UTF-8 (with or without BOM), UTF-16 and UTF-32 are detected (RFC 8259)
    except UnicodeDecodeError as e:
        raise AnnotationFormatError(
            f"{path} is not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start} does not decode; COCO "
            f"annotation and results files are UTF-8 JSON, so re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{path} is not valid JSON: {e}") from e


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a COCO annotation file, refusing what would be read wrongly later, with one line naming the
    file and the entries at fault:

    * the keys: ``images`` (id, file_name), ``annotations`` (id, image_id, bbox, category_id), ``categories`` (id);
    * ids that are not integers (strings, floats), and image ``width``/``height`` that are not positive integers;
    * duplicate image, annotation or category ids (they would merge images' annotations, shrink the evaluated set,
      or make pycocotools replace one ground-truth box by another);
    * annotations whose ``image_id`` is not in ``images`` or whose ``category_id`` is not in ``categories``: their
      boxes would be dropped without a word (the file's images and annotations disagree; remove those annotations
      or add their images/categories);
    * text that is not UTF-8, and JSON that does not parse.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file {path!r} does not exist")
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{path} is not a COCO annotation file: the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(_require(data, key, "the top level", path), list):
            raise AnnotationFormatError(f"{path}: {key!r} must be a list")
    required = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "bbox", "category_id")}
    for group, entries in data.items():
        if group not in _INT_FIELDS:
            continue
        bad: list[str] = []
        for i, entry in enumerate(entries):
            for key in required.get(group, ("id",)):
                _require(entry, key, f"{group}[{i}]", path)
            bad += [f"{group}[{i}].{k}={entry[k]!r}" for k in _INT_FIELDS[group] if not _is_int(entry[k])]
            if group == "images":
                bad += [f"images[{i}].{k}={entry[k]!r}" for k in ("width", "height") if not _positive(entry.get(k, 1))]
        if bad:
            raise AnnotationFormatError(
                f'{path}: {_listed(bad, str)}; COCO ids are integers ("id": 42, not "42") and image width/height '
                f"positive numbers"
            )
        dup = _duplicates([e["id"] for e in entries])
        if dup:
            what = group[:-1] if group != "categories" else "category"
            raise AnnotationFormatError(
                f"{path}: duplicate {what} ids {_listed(dup)}; each {what} needs its own id "
                f"(pycocotools indexes them by id)"
            )
    for key, group in (("image_id", "images"), ("category_id", "categories")):
        known = {e["id"] for e in data[group]}
        dangling = [a for a in data["annotations"] if a[key] not in known]
        if dangling:
            missing = sorted({a[key] for a in dangling})
            raise AnnotationFormatError(
                f"{path}: annotation ids {_listed([a['id'] for a in dangling])} use {key} {_listed(missing)} "
                f"missing from {group!r}; remove those annotations or add the {group} they refer to"
            )
    return data


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image as 8-bit RGB in its displayed orientation.

    * EXIF orientation is applied (``ImageOps.exif_transpose``): COCO's width/height and boxes are in the displayed
      frame, as in pycocotools' and detectron2's readers, while a camera JPEG may store its pixels rotated.
    * 16-bit grey (``I;16``: 16-bit PNG and TIFF) is scaled to 8 bits (``>> 8``); Pillow's ``convert("RGB")`` clips
      it at 255, which turns almost every pixel white. 16-bit colour PNGs already decode to their high bytes.
    * 32-bit integer or float images (``I``, ``F``) have no defined 8-bit range: ``ValueError`` rather than a guess.

    Raises:
        OSError, ValueError: the file cannot be read or decoded.
    """
    with Image.open(path) as im:
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode.startswith("I;16"):
            grey = np.asarray(im) >> 8  # uint16, either byte order -> high byte
            return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
        if im.mode in ("I", "F"):
            raise ValueError(f"mode {im.mode} (32-bit) has no defined 8-bit range; save it as 8- or 16-bit")
        return im.convert("RGB")


def decode_checked(path: str | os.PathLike, info: dict[str, Any], ann_file: str) -> Image.Image:
    """:func:`read_image` of ``path``, checked against the ``width``/``height`` of its ``images`` entry ``info``.

    Raises:
        BadImageError: naming the file, its id and what is wrong (both sizes on a mismatch).
    """
    path = os.fspath(path)
    try:
        image = read_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"image {path!r} (id {info['id']}) could not be decoded: {e}") from e
    if "width" in info and "height" in info and image.size != (round(info["width"]), round(info["height"])):
        raise BadImageError(
            f"image {path!r} (id {info['id']}) decodes to {image.width}x{image.height} (width x height, EXIF "
            f"orientation applied) but {ann_file} gives {info['width']}x{info['height']}: its boxes would not match "
            f"its pixels; fix the annotation's width/height or the image"
        )
    return image


def check_options(on_bad_image: str = "skip", min_box_size: float = 1.0, probe_images: int = 16) -> None:
    """The checks of :class:`CocoDetection`'s options, before it reads anything (also run on a run's config)."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image={on_bad_image!r} is not valid; choose one of {', '.join(BAD_IMAGE_POLICIES)}")
    check("min_box_size", min_box_size, _positive(min_box_size),
          "use a side > 0 in pixels: narrower or lower boxes are dropped (the detectors need boxes of positive "
          "width and height)")  # fmt: skip
    check_int("probe_images", probe_images, 0, meaning="images decoded at construction; 0 = none")


class CocoDetection(Dataset):
    """Images of a COCO-format annotation file with their boxes (xyxy, absolute pixels) and contiguous labels.

    Args:
        image_dir: folder the ``file_name`` entries are relative to.
        ann_file: COCO annotation JSON.
        transforms: callable ``(PIL image, target) -> (tensor image, target)``; None = to tensor only.
        on_bad_image: what to do with an image that is missing, does not decode, or whose decoded size (EXIF
            orientation applied) is not the annotation's width x height: ``"skip"`` (leave out and count) or
            ``"fail"`` (raise naming the file).
        min_box_size: boxes narrower or lower than this (pixels, after clipping) are dropped and counted.
        probe_images: images decoded at construction, evenly spaced over the list, so that a folder of unusable
            images is refused before any training (see :meth:`check_images`); 0 = none.

    Raises:
        AnnotationFormatError: see :func:`load_coco_json`.
        ValueError: the file lists no images.
        FileNotFoundError: every image is missing, or (``"fail"``) some are.
        BadImageError: every probed image is unusable, or (``"fail"``) one is.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Any = None,
        on_bad_image: str = "skip",
        min_box_size: float = 1.0,
        probe_images: int = 16,
    ) -> None:
        check_options(on_bad_image, min_box_size, probe_images)
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
        self._targets: list[tuple[np.ndarray, np.ndarray]] = []
        for img in self.images:
            boxes, labels = [], []
            for ann in by_image.get(img["id"], []):
                if ann.get("iscrowd", 0):
                    self.num_crowd += 1
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
        self.check_images(probe_images)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def aspect_ratio(self, index: int) -> float:
        """Width / height as displayed, from the JSON when it has the sizes, else from the image header."""
        img = self.images[index]
        if "width" in img and "height" in img:
            return img["width"] / img["height"]
        try:
            with Image.open(self.image_path(index)) as im:
                w, h = im.size
                if im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # displayed rotated by 90 degrees
                    w, h = h, w
                return w / h
        except OSError:
            return 1.0

    def decode(self, index: int) -> Image.Image:
        """The image as 8-bit RGB, checked against the annotation's width and height (:func:`decode_checked`)."""
        return decode_checked(self.image_path(index), self.images[index], self.ann_file)

    def check_images(self, probe: int) -> None:
        """Refuse a split that cannot yield an image, before any training.

        Every ``file_name`` is looked up (one ``stat`` each) and ``probe`` of the present images, evenly spaced,
        are decoded and size-checked. Refused under both policies: an empty list, every image missing, every probed
        image unusable (exact when ``probe`` covers the list; otherwise a sample). Under ``"fail"`` any missing or
        unusable image found is refused too; under ``"skip"`` they are counted in a warning and left out when loaded.
        """
        n = len(self.images)
        if n == 0:
            raise ValueError(f"{self.ann_file} lists no images ('images' is empty): nothing to train or evaluate on")
        missing = [i for i in range(n) if not self.image_path(i).is_file()]
        if len(missing) == n or (missing and self.on_bad_image == "fail"):
            names = [self.images[i]["file_name"] for i in missing]
            every = "every image of" if len(missing) == n else f"{len(missing)} of {n} images of"
            fix = "" if len(missing) == n else "; or set on_bad_image=skip to leave them out"
            raise FileNotFoundError(
                f"{every} {self.ann_file} missing from {os.fspath(self.image_dir)!r}: {_listed(names)}; check that "
                f"the image folder is the one the file_name entries are relative to{fix}"
            )
        present = sorted(set(range(n)) - set(missing))
        picks = sorted({present[round(k)] for k in np.linspace(0, len(present) - 1, min(probe, len(present)))})
        errors: list[str] = []
        for i in picks:
            try:
                self.decode(i)
            except BadImageError as e:
                errors.append(str(e))
        if picks and len(errors) == len(picks):
            tried = "every image" if len(picks) == len(present) else f"all {len(picks)} images tried (evenly spaced)"
            raise BadImageError(f"{tried} of {self.ann_file} unusable; the first: {errors[0]}")
        if errors and self.on_bad_image == "fail":
            raise BadImageError(f"{errors[0]}; or set on_bad_image=skip to leave such images out")
        if missing:
            names = _listed([self.images[i]["file_name"] for i in missing])
            logger.warning("%s: %d of %d images missing (%s); skipped", self.ann_file, len(missing), n, names)
        if errors:
            logger.warning(
                "%s: %d of %d images probed are unusable and will be skipped (%s)",
                self.ann_file,
                len(errors),
                len(picks),
                "; ".join(errors[:3]),
            )

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | SkippedImage:
        info = self.images[index]
        try:
            image = self.decode(index)
        except BadImageError as e:
            if self.on_bad_image == "fail":
                raise
            logger.warning("skipping: %s", e)
            return SkippedImage(info["id"], os.fspath(self.image_path(index)), str(e))
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
    """Resize (when ``min_size`` is set; ``max_size`` defaults to it) and, for training, a random flip."""
    if min_size is not None:
        check_int("min_size", min_size, 1, meaning="the shorter side in pixels; unset = keep the image size")
    if max_size is not None:
        check_int("max_size", max_size, max(1, min_size or 1), meaning="the longer side's cap, >= min_size")
    check("hflip", hflip, _number(hflip) and 0 <= hflip <= 1, "use a flip probability in [0, 1]")
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
