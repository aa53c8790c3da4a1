"""Classification data: an ImageNet-layout image folder, or scikit-learn's bundled handwritten digits.

* ``imagefolder``: ``<root>/train/<class>/*.jpg`` and ``<root>/val/<class>/*.jpg``. Training uses random-resized crop
  and horizontal flip; evaluation resizes the short side to ``image_size / crop_pct`` and centre-crops
  ``image_size`` (the ImageNet protocol of the model cards). Input size, mean/std and crop ratio default to the
  backbone's model card and can be overridden.
* ``digits`` (the default): the 1,797 8x8 handwritten digits bundled with scikit-learn (real data, no download),
  scaled to [0, 1], upsampled to ``image_size`` and tiled to three channels; a fixed stratified train/val split.
  Training shifts images by a few pixels (no flips: digits are not mirror-symmetric).

Every dataset item is ``(image, label, index)``: the index lets evaluation count each val image exactly once when
a distributed sampler pads the last batch with repeats.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from backbones import ModelCard

from .recipes import Cutout

logger = logging.getLogger(__name__)

CLASSIFICATION_DATASETS = ("digits", "imagefolder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
BAD_IMAGE_POLICIES = ("fail", "skip")


_FIX_BAD = "Remove or replace the file, or set dataset.bad_images=skip"


class BadImageError(RuntimeError):
    """An image file that PIL cannot decode; the message names the file."""


@dataclass
class ClassificationData:
    """Train and val datasets with what a model needs to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---- transforms -----------------------------------------------------------------------------------------------------
def _v2():
    from torchvision.transforms import v2

    return v2


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    interpolation: str = "bilinear",
    cutout: int = 0,
) -> Callable:
    """Random-resized crop (Inception-style, scale range ``scale``), flip, normalise, optional cutout."""
    v2 = _v2()
    ops = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=_interp(interpolation), antialias=True),
    ]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if cutout:
        ops.append(Cutout(cutout))
    return v2.Compose(ops)


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float, interpolation: str = "bilinear"
) -> Callable:
    """Resize the short side to ``image_size / crop_pct`` (e.g. 256 for 224 at 0.875), centre-crop ``image_size``."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct={crop_pct} must be in (0, 1]")
    v2 = _v2()
    resize = int(image_size / crop_pct + 0.5)  # round half up: 224 / 0.875 = 256, 331 / 0.911 = 363
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=_interp(interpolation), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    valid = {
        "nearest": InterpolationMode.NEAREST,
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
    }
    if name not in valid:
        raise ValueError(f"interpolation={name!r} is not valid; choose one of {', '.join(valid)}")
    return valid[name]


# ---- ImageNet-layout folders ---------------------------------------------------------------------------------------
def scan_split(split_dir: str) -> dict[str, list[str]]:
    """``{class name: sorted image paths}`` of one split folder; raises naming the folder at fault."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(
            f"dataset folder {split_dir!r} does not exist; expected the ImageNet layout "
            f"<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir!r} has no class folders; expected {split_dir}/<class>/<image files>")
    out: dict[str, list[str]] = {}
    for c in classes:
        folder = os.path.join(split_dir, c)
        files = sorted(
            os.path.join(folder, e.name)
            for e in os.scandir(folder)
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise ValueError(f"class folder {folder!r} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)})")
        out[c] = files
    return out


def check_same_classes(train: Sequence[str], val: Sequence[str], train_dir: str, val_dir: str) -> None:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train or only_val:
        parts = [f"the class folders of {train_dir!r} and {val_dir!r} differ"]
        if only_train:
            parts.append(f"only in train: {', '.join(only_train[:10])}" + (" ..." if len(only_train) > 10 else ""))
        if only_val:
            parts.append(f"only in val: {', '.join(only_val[:10])}" + (" ..." if len(only_val) > 10 else ""))
        raise ValueError("; ".join(parts))


class ImageFolderDataset(Dataset):
    """``(transform(image), label, index)`` for every image of one split.

    ``bad_images="fail"`` raises :class:`BadImageError` naming an undecodable file; ``"skip"`` returns None for it,
    which :func:`collate_skip_bad` drops from the batch and counts.
    """

    def __init__(
        self, samples: list[tuple[str, int]], transform: Callable | None = None, bad_images: str = "fail"
    ) -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images={bad_images!r} is not valid; choose one of {', '.join(BAD_IMAGE_POLICIES)}")
        self.samples = samples
        self.transform = transform
        self.bad_images = bad_images

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def decode(path: str):
        """The image as RGB; raises :class:`BadImageError` naming ``path`` when PIL cannot decode it."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
            raise BadImageError(f"cannot decode image {path!r}: {e}") from e

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = self.decode(path)
        except BadImageError as e:
            if self.bad_images == "skip":
                logger.warning("skipping: %s", e)
                return None
            raise BadImageError(f"{e}. {_FIX_BAD}") from e
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index

    def check_images(self, split_dir: str, probe: int = 16) -> None:
        """Decode ``probe`` images, evenly spaced over the split, before any training.

        Refused under both policies when every image tried fails (exact when ``probe`` covers the split, otherwise a
        sample): the split would yield no images. Under ``"fail"`` any failure is refused; under ``"skip"`` the
        failures are counted in a warning (the loader skips and counts them again).
        """
        n = len(self.samples)
        picks = sorted({round(k) for k in torch.linspace(0, n - 1, min(probe, n)).tolist()})
        errors = []
        for i in picks:
            try:
                self.decode(self.samples[i][0])
            except BadImageError as e:
                errors.append(str(e))
        if picks and len(errors) == len(picks):
            tried = f"any of its {n} images" if len(picks) == n else f"any of {len(picks)} images tried (evenly spaced)"
            raise BadImageError(f"split folder {split_dir!r} yields no image: PIL cannot decode {tried}; {errors[0]}")
        if errors and self.bad_images == "fail":
            raise BadImageError(f"{errors[0]}. {_FIX_BAD}")
        if errors:
            logger.warning("%s: %d of %d images probed do not decode and will be skipped (%s)", split_dir,
                           len(errors), len(picks), "; ".join(errors[:3]))  # fmt: skip


def collate_skip_bad(batch: list) -> tuple[Tensor, Tensor, Tensor, int]:
    """Collate ``(image, label, index)`` items, dropping None (undecodable, skipped); returns the count dropped."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    images, labels, index = default_collate(good)
    return images, labels, index, skipped


def imagefolder_datasets(
    card: ModelCard,
    root: str,
    train_dir: str = "train",
    val_dir: str = "val",
    image_size: int | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    interpolation: str = "bilinear",
    bad_images: str = "fail",
    cutout: int = 0,
) -> ClassificationData:
    """Train/val datasets of an ImageNet-layout folder; unset size/crop/mean/std come from the model card."""
    if not root:
        raise ValueError("dataset=imagefolder needs dataset.root=<folder holding train/ and val/>")
    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root!r} does not exist (dataset.root)")
    tdir, vdir = os.path.join(root, train_dir), os.path.join(root, val_dir)
    train_scan, val_scan = scan_split(tdir), scan_split(vdir)
    check_same_classes(list(train_scan), list(val_scan), tdir, vdir)
    classes = list(train_scan)
    size = int(image_size or card.input_size)
    mean_, std_ = tuple(mean or card.mean), tuple(std or card.std)
    crop = float(crop_pct or card.crop_pct)

    def samples(scan: dict[str, list[str]]) -> list[tuple[str, int]]:
        return [(p, i) for i, c in enumerate(classes) for p in scan[c]]

    train = ImageFolderDataset(
        samples(train_scan), train_transform(size, mean_, std_, scale, hflip, interpolation, cutout), bad_images
    )
    val = ImageFolderDataset(samples(val_scan), eval_transform(size, mean_, std_, crop, interpolation), bad_images)
    train.check_images(tdir)
    val.check_images(vdir)
    logger.info("imagefolder %s: %d classes, %d train / %d val images", root, len(classes), len(train), len(val))
    return ClassificationData(train, val, classes, size, mean_, std_, {"crop_pct": crop})


# ---- scikit-learn digits -------------------------------------------------------------------------------------------
class TensorImageDataset(Dataset):
    """Images held in memory as one float tensor ``(N, 3, S, S)`` in [0, 1]; ``transform`` runs per item."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index]), index


def load_digits_tensors(image_size: int = 32) -> tuple[Tensor, Tensor]:
    """All 1,797 scikit-learn digits as ``(N, 3, image_size, image_size)`` floats in [0, 1] and labels."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8), pixel counts 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.as_tensor(d.target, dtype=torch.long)


def digits_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified, seeded train/val indices (the same on every rank and every run)."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    idx = list(range(len(labels)))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels.numpy())
    return torch.as_tensor(sorted(tr)), torch.as_tensor(sorted(va))


def digits_datasets(
    card: ModelCard,
    image_size: int = 32,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    shift: int = 2,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cutout: int = 0,
) -> ClassificationData:
    """scikit-learn digits at ``image_size``; train items are shifted by up to ``shift`` pixels each way."""
    v2 = _v2()
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is below the digits' native 8 px")
    images, labels = load_digits_tensors(image_size)
    tr, va = digits_split(labels, val_fraction, split_seed)
    mean_, std_ = tuple(mean or card.mean), tuple(std or card.std)
    train_ops: list = [v2.RandomCrop(image_size, padding=shift)] if shift else []
    train_ops.append(v2.Normalize(list(mean_), list(std_)))
    if cutout:
        train_ops.append(Cutout(cutout))
    train = TensorImageDataset(images[tr], labels[tr], v2.Compose(train_ops))
    val = TensorImageDataset(images[va], labels[va], v2.Normalize(list(mean_), list(std_)))
    classes = [str(i) for i in range(10)]
    return ClassificationData(train, val, classes, image_size, mean_, std_)


# ---- dispatch ------------------------------------------------------------------------------------------------------
_BUILDERS: dict[str, Callable[..., ClassificationData]] = {
    "digits": digits_datasets,
    "imagefolder": imagefolder_datasets,
}
# Keys of conf/dataset/*.yaml that are not arguments of the builders above (they configure loaders and the run).
LOADER_KEYS = ("task", "name", "batch_size", "val_batch_size", "num_workers", "epochs")


def build_datasets(dataset_cfg: Mapping[str, Any], card: ModelCard, cutout: int = 0) -> ClassificationData:
    """Build the datasets a ``conf/dataset/*.yaml`` entry describes; a detection dataset is refused by name."""
    name = dataset_cfg.get("name")
    task = dataset_cfg.get("task")
    if task != "classification" or name not in _BUILDERS:
        what = f"dataset {name!r}" + (f" is a {task} dataset" if task and task != "classification" else " is unknown")
        close = difflib.get_close_matches(str(name), CLASSIFICATION_DATASETS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{what}{hint}; classification runs take dataset={' or dataset='.join(CLASSIFICATION_DATASETS)}"
        )
    builder = _BUILDERS[name]
    import inspect

    valid = [p for p in inspect.signature(builder).parameters if p not in ("card", "cutout")]
    kwargs = {k: v for k, v in dict(dataset_cfg).items() if k not in LOADER_KEYS}
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) for dataset={name}: {', '.join(unknown)}; valid: {', '.join(valid)}")
    for k in ("mean", "std", "scale"):
        if kwargs.get(k) is not None:
            kwargs[k] = tuple(float(v) for v in kwargs[k])
    return builder(card, cutout=cutout, **kwargs)
