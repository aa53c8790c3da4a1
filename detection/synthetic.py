"""A deterministic synthetic COCO-format detection dataset ("shapes"), generated on first use into a cache folder.

Each image has a textured background and 0..``max_objects`` filled shapes (circle, square, triangle, cross) of
random colour, size and position; shapes may overlap, but every annotated shape keeps at least
``min_visible`` of its pixels visible (occlusion without hidden objects). A fraction of the images is empty.
Image ``i`` of a split depends only on ``(seed, split, i)``, so the same spec always gives the same bytes.

The folder is COCO-shaped (``train/``, ``val/``, ``annotations/instances_{train,val}.json``), so the very same
code path as real COCO (JSON -> dataset -> COCOeval) runs. It is written to a temporary folder and renamed, so an
interrupted generation never leaves a half-written dataset; the name carries a hash of the spec, so a changed spec
generates a new folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backbones.atomic import write_json_atomic

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "cross")
VERSION = 1  # bump when the drawing code changes the output for the same spec


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate; every field enters the cache folder's name."""

    num_train: int = 2000
    num_val: int = 200
    min_side: int = 128  # image sides are drawn from [min_side, max_side] in steps of 16
    max_side: int = 192
    min_object: int = 16  # object box side in pixels
    max_object: int = 64
    max_objects: int = 5
    empty_fraction: float = 0.05
    min_visible: float = 0.5
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def default_cache_dir() -> Path:
    """``$CNN_BACKBONES_CACHE`` or ``~/.cache/cnn-backbones``."""
    return Path(os.environ.get("CNN_BACKBONES_CACHE", Path.home() / ".cache" / "cnn-backbones"))


def dataset_dir(root: str | os.PathLike, spec: ShapesSpec) -> Path:
    return Path(root) / f"shapes-v{VERSION}-{spec.key()}"


def ensure_shapes(root: str | os.PathLike | None = None, spec: ShapesSpec | None = None) -> Path:
    """The dataset folder for ``spec`` under ``root``, generating it (atomically) if it does not exist yet."""
    spec = spec or ShapesSpec()
    root = Path(root) if root is not None else default_cache_dir()
    final = dataset_dir(root, spec)
    if (final / "annotations" / "instances_val.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        logger.info(
            "generating the shapes dataset (%d train, %d val images) into %s", spec.num_train, spec.num_val, final
        )
        for split, n in (("train", spec.num_train), ("val", spec.num_val)):
            _write_split(tmp, split, n, spec)
        write_json_atomic(tmp / "spec.json", {**asdict(spec), "version": VERSION}, indent=1)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "annotations" / "instances_val.json").is_file():  # not a concurrent writer's result
                raise
            logger.info("another process generated %s first; using it", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_split(out: Path, split: str, n: int, spec: ShapesSpec) -> None:
    img_dir = out / split
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        image, objects = render_image(spec, split, i)
        name = f"{i:06d}.png"
        image.save(img_dir / name)
        image_id = i + 1  # COCO ids start at 1 (id 0 is mishandled by some tools)
        images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
        for label, box, area in objects:
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"synthetic shapes {split}", "version": str(VERSION), "spec": asdict(spec)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)],
    }
    (out / "annotations").mkdir(exist_ok=True)
    write_json_atomic(out / "annotations" / f"instances_{split}.json", coco)


def render_image(spec: ShapesSpec, split: str, index: int) -> tuple[Image.Image, list[tuple[int, list[int], int]]]:
    """Image ``index`` of ``split`` and its objects as ``(class index, [x0, y0, x1, y1], visible area)``."""
    split_code = {"train": 0, "val": 1}.get(split, 2)
    rng = np.random.default_rng([spec.seed, split_code, index])
    sides = np.arange(spec.min_side, spec.max_side + 1, 16)
    w, h = int(rng.choice(sides)), int(rng.choice(sides))
    image = Image.fromarray(_background(rng, h, w))
    owner = np.full((h, w), -1, dtype=np.int32)  # which object each pixel shows, for occlusion
    n = 0 if rng.random() < spec.empty_fraction else int(rng.integers(1, spec.max_objects + 1))
    objects: list[tuple[int, list[int]]] = []
    pixels: list[int] = []
    for _ in range(n):
        for _attempt in range(20):
            label = int(rng.integers(len(CLASSES)))
            side = int(rng.integers(spec.min_object, min(spec.max_object, w, h) + 1))
            bw = side if label != 1 else int(side * rng.uniform(0.7, 1.0))
            bh = side if label != 1 else int(side * rng.uniform(0.7, 1.0))
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = [x0, y0, x0 + bw, y0 + bh]
            mask = _shape_mask(label, box, h, w)
            trial = owner.copy()
            trial[mask] = len(objects)
            visible = [int((trial == k).sum()) for k in range(len(objects))]
            if all(v >= spec.min_visible * p for v, p in zip(visible, pixels)):
                owner = trial
                pixels.append(int(mask.sum()))
                objects.append((label, box))
                _draw(image, label, box, _colour(rng, image, box))
                break
    areas = [int((owner == k).sum()) for k in range(len(objects))]
    return image, [(label, box, area) for (label, box), area in zip(objects, areas)]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour gradient plus pixel noise."""
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, image: Image.Image, box: list[int]) -> tuple[int, int, int]:
    """A random colour far enough from the mean background colour under ``box``."""
    region = np.asarray(image.crop(box), dtype=np.float32).reshape(-1, 3).mean(0)
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.abs(c - region).sum() > 150:
            break
    return int(c[0]), int(c[1]), int(c[2])


def _polygon(label: int, box: list[int]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    if label == 2:  # triangle, apex up
        return [((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
    if label == 3:  # cross: two bars of a third of the side
        w, h = x1 - x0, y1 - y0
        a, b = x0 + w / 3, x0 + 2 * w / 3
        c, d = y0 + h / 3, y0 + 2 * h / 3
        return [(a, y0), (b, y0), (b, c), (x1 - 1, c), (x1 - 1, d), (b, d), (b, y1 - 1), (a, y1 - 1), (a, d),
                (x0, d), (x0, c), (a, c)]  # fmt: skip
    return None


def _paint(draw: ImageDraw.ImageDraw, label: int, box: list[int], fill: int | tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if label == 0:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif label == 1:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        draw.polygon(_polygon(label, box), fill=fill)


def _draw(image: Image.Image, label: int, box: list[int], colour: tuple[int, int, int]) -> None:
    _paint(ImageDraw.Draw(image), label, box, colour)


def _shape_mask(label: int, box: list[int], h: int, w: int) -> np.ndarray:
    mask = Image.new("1", (w, h), 0)
    _paint(ImageDraw.Draw(mask), label, box, 1)
    return np.asarray(mask, dtype=bool)
