"""Drawing boxes on images (used by ``tools/visualize.py``).

Everything given is checked before anything is written: ``limit`` and ``score``, the annotation file
(:func:`~detection.data.load_coco_json`) and the results file (a list of COCO results whose image and category ids
are in the annotation file). An image that is missing, does not decode or whose size is not the annotation's is
skipped with a warning naming it and counted in :attr:`DrawReport.skipped`. Output names are ``<stem>.png``;
images of the selection that share a stem (``a/1.jpg``, ``b/1.jpg``) get ``<stem>_<image id>.png``.
"""

from __future__ import annotations

import colorsys
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from backbones.checks import check, check_int

from .data import BadImageError, decode_checked, load_coco_json, read_json

logger = logging.getLogger(__name__)

GT_COLOUR = (0, 200, 0)
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


@dataclass
class DrawReport:
    """What :func:`draw_dataset` did: the files written and, per image it could not draw, ``"<path>: <why>"``."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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


def load_results(path: str | os.PathLike, data: dict[str, Any], ann_file: str) -> list[dict[str, Any]]:
    """The COCO results in ``path``, checked against the annotation ``data``; one ``ValueError`` naming the file
    and the first entry at fault otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file {path!r} does not exist")
    results = read_json(path)
    shape = "a list of {image_id, category_id, bbox: [x, y, w, h], score} (COCO results, as the evaluation writes)"
    if not isinstance(results, list):
        raise ValueError(f"results file {path} is not COCO results: the top level is a {type(results).__name__}; "
                         f"expected {shape}")  # fmt: skip
    for i, r in enumerate(results):
        bad = _result_problem(r)
        if bad:
            raise ValueError(f"results file {path}: entry [{i}] {bad}; expected {shape}")
    for key, group in (("image_id", "images"), ("category_id", "categories")):
        known = {e["id"] for e in data[group]}
        unknown = sorted({r[key] for r in results if r[key] not in known}, key=str)
        if unknown:
            raise ValueError(
                f"results file {path}: {key}s {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not in "
                f"{ann_file}'s {group!r}; were the results made on another dataset?"
            )
    return results


def _result_problem(r: Any) -> str:
    """What is wrong with one results entry, or ``""``."""
    if not isinstance(r, dict):
        return f"is {r!r}, not an object"
    missing = [k for k in RESULT_KEYS if k not in r]
    if missing:
        return f"has no {', '.join(map(repr, missing))}"
    bbox = r["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
        return f"has bbox={bbox!r}"
    if not isinstance(r["score"], int | float):
        return f"has score={r['score']!r}"
    return ""


def output_names(images: Sequence[dict[str, Any]]) -> list[str]:
    """``<stem>.png`` per image; images sharing a stem get ``<stem>_<image id>.png``; ``<image id>.png`` for all if
    names still collide (ids are unique)."""
    stems = [Path(img["file_name"]).stem for img in images]
    count = Counter(stems)
    names = [f"{s}.png" if count[s] == 1 else f"{s}_{img['id']}.png" for s, img in zip(stems, images)]
    if len(set(names)) < len(names):
        names = [f"{img['id']}.png" for img in images]
    return names


def draw_dataset(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    results_file: str | os.PathLike | None = None,
    score: float = 0.3,
    limit: int = 16,
    with_gt: bool = False,
) -> DrawReport:
    """Write one PNG per image of the first ``limit`` (0 = all) with predictions (``results_file``) or the ground
    truth drawn on it into ``out_dir`` (created at the first write, so nothing is created when nothing is drawn)."""
    limit = check_int("limit", limit, 0, meaning="0 = every image")
    check("score", score, isinstance(score, int | float) and 0 <= score <= 1, "use a score threshold in [0, 1]")
    ann_file = os.fspath(ann_file)
    data = load_coco_json(ann_file)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder {os.fspath(image_dir)!r} does not exist")
    names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    order = {c: k for k, c in enumerate(sorted(names))}
    gt: dict[Any, list[dict]] = defaultdict(list)
    for a in data["annotations"]:
        gt[a["image_id"]].append(a)
    dets: dict[Any, list[dict]] = defaultdict(list)
    if results_file is not None:
        for r in load_results(results_file, data, ann_file):
            if r["score"] >= score:
                dets[r["image_id"]].append(r)
    images = data["images"][:limit] if limit else data["images"]
    out = Path(out_dir)
    report = DrawReport()
    for img, name in zip(images, output_names(images)):
        try:
            image = decode_checked(Path(image_dir) / img["file_name"], img, ann_file)
        except BadImageError as e:
            logger.warning("skipping: %s", e)
            report.skipped.append(str(e))
            continue
        boxes, labels, colours = [], [], []
        if results_file is None or with_gt:
            for a in gt[img["id"]]:
                boxes.append(a["bbox"])
                labels.append(names[a["category_id"]] if results_file is None else "")
                colours.append(GT_COLOUR)
        for r in sorted(dets[img["id"]], key=lambda r: r["score"]):
            boxes.append(r["bbox"])
            labels.append(f"{names[r['category_id']]} {r['score']:.2f}")
            colours.append(class_colour(order[r["category_id"]]))
        out.mkdir(parents=True, exist_ok=True)
        draw_boxes(image, boxes, labels, colours).save(out / name)
        report.written.append(out / name)
    return report
