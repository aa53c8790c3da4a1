"""Drawing boxes on images (used by ``tools/visualize.py``)."""

from __future__ import annotations

import colorsys
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .data import load_coco_json

GT_COLOUR = (0, 200, 0)


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    width: int = 2,
) -> Image.Image:
    """Draw xywh ``boxes`` with a text label each on a copy of ``image``."""
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    for (x, y, w, h), text, colour in zip(boxes, labels, colours):
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        if text:
            tw = draw.textlength(text)
            draw.rectangle([x, max(0, y - 11), x + tw + 2, max(0, y - 11) + 11], fill=colour)
            draw.text((x + 1, max(0, y - 11)), text, fill=(0, 0, 0))
    return image


def draw_dataset(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    results_file: str | os.PathLike | None = None,
    score: float = 0.3,
    limit: int = 16,
    with_gt: bool = False,
) -> list[Path]:
    """Write ``<out_dir>/<image stem>.png`` with predictions (``results_file``) or the ground truth drawn on it."""
    data = load_coco_json(ann_file)
    names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    order = {c: k for k, c in enumerate(sorted(names))}
    gt: dict[Any, list[dict]] = defaultdict(list)
    for a in data["annotations"]:
        gt[a["image_id"]].append(a)
    dets: dict[Any, list[dict]] = defaultdict(list)
    if results_file is not None:
        path = os.fspath(results_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"results file {path!r} does not exist")
        with open(path) as f:
            for r in json.load(f):
                if r["score"] >= score:
                    dets[r["image_id"]].append(r)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = data["images"][:limit] if limit else data["images"]
    written = []
    for img in images:
        image = Image.open(Path(image_dir) / img["file_name"])
        boxes, labels, colours = [], [], []
        if results_file is None or with_gt:
            for a in gt[img["id"]]:
                boxes.append(a["bbox"])
                labels.append(names.get(a["category_id"], "?") if results_file is None else "")
                colours.append(GT_COLOUR)
        for r in sorted(dets[img["id"]], key=lambda r: r["score"]):
            boxes.append(r["bbox"])
            labels.append(f"{names.get(r['category_id'], '?')} {r['score']:.2f}")
            colours.append(class_colour(order.get(r["category_id"], 0)))
        path = out / f"{Path(img['file_name']).stem}.png"
        draw_boxes(image, boxes, labels, colours).save(path)
        written.append(path)
    return written
