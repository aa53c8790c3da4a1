"""Throughput measurements for the detection pipeline (``tools/bench_detection.py``; not tests).

* loader vs model: images/s the training data loader delivers (decode, resize, flip, collate, workers) against
  images/s of a full training step (forward, backward, SGD step) of the configured detector;
* R50-FPN inference: our ``faster_rcnn`` + ``resnet50`` against torchvision's ``fasterrcnn_resnet50_fpn`` with the
  same weights, timed interleaved (ours, theirs, ours, ...) so machine load hits both alike;
* memory layouts: a training step of the configured detector with every parameter contiguous, with the backbone
  channels-last (``trainer.channels_last=true``) and with the whole detector channels-last, interleaved.

Each returns one table row (a dict); ``*_COLUMNS`` are the tables' columns for ``backbones.benchmark``'s JSON reports
and their rendering into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch

#: (row key, header, format) of :func:`loader_vs_step`'s table
LOADER_COLUMNS = (
    ("backbone", "backbone", ""),
    ("detector", "detector", ""),
    ("batch_size", "batch", ""),
    ("workers", "loader workers", ""),
    ("loader_images_per_s", "loader img/s", ".1f"),
    ("train_images_per_s", "training step img/s", ".1f"),
)
#: (row key, header, format) of :func:`r50_fpn_inference_ratio`'s table
R50_FPN_COLUMNS = (
    ("side", "px", ""),
    ("layout", "our backbone layout", ""),
    ("repeats", "repeats", ""),
    ("ours_s", "ours s", ".3f"),
    ("torchvision_s", "torchvision s", ".3f"),
    ("ratio", "wall ours/tv", ".3f"),
    ("ours_cpu_s", "ours CPU s", ".3f"),
    ("torchvision_cpu_s", "torchvision CPU s", ".3f"),
    ("cpu_ratio", "CPU ours/tv", ".3f"),
)
#: (row key, header, format) of :func:`layout_rows`' table
LAYOUT_COLUMNS = (
    ("backbone", "backbone", ""),
    ("detector", "detector", ""),
    ("layout", "layout", ""),
    ("ms_per_step", "ms per training step", ".1f"),
    ("ratio", "ratio to backbone channels-last", ".3f"),
)


def loader_images_per_second(cfg: Mapping[str, Any], batches: int = 30) -> float:
    """Images/s out of the training DataLoader of ``cfg["dataset"]`` (after a warm-up batch)."""
    from .module import DetectionDataModule

    dm = DetectionDataModule(cfg["dataset"], seed=0)
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        images, _, _ = next(it)
        n += len(images)
    return n / (time.perf_counter() - start)


def train_step_images_per_second(cfg: Mapping[str, Any], steps: int = 10) -> float:
    """Images/s of forward + backward + SGD step on real training batches of ``cfg`` (after a warm-up step)."""
    from .module import DetectionDataModule, DetectionModule

    dm = DetectionDataModule({**cfg["dataset"], "workers": 0}, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    model = DetectionModule(cfg, dm.num_classes).model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    batches = []
    for i, batch in enumerate(dm.train_dataloader()):
        batches.append(batch)
        if i == steps:
            break
    n, elapsed = 0, 0.0
    for k, (images, targets, _) in enumerate(batches):
        start = time.perf_counter()
        losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if k:  # the first step warms up
            elapsed += time.perf_counter() - start
            n += len(images)
    return n / elapsed


def loader_vs_step(cfg: Mapping[str, Any], steps: int = 10) -> dict[str, Any]:
    """One row: images/s of ``cfg``'s training loader (``3 * steps`` batches) and of its training step (``steps``)."""
    return {
        "backbone": cfg["backbone"]["name"],
        "detector": cfg["detector"]["name"],
        "batch_size": cfg["dataset"]["batch_size"],
        "workers": cfg["dataset"]["workers"],
        "loader_images_per_s": loader_images_per_second(cfg, batches=3 * steps),
        "train_images_per_s": train_step_images_per_second(cfg, steps=steps),
    }


#: the layouts :func:`layout_step_times` compares: (backbone channels-last, neck and heads channels-last)
LAYOUTS = {"contiguous": (False, False), "backbone channels-last": (True, False), "all channels-last": (True, True)}


def layout_step_times(cfg: Mapping[str, Any], steps: int = 12) -> dict[str, float]:
    """Median ms of a training step (forward, backward, SGD) of ``cfg``'s detector in each of :data:`LAYOUTS`, the
    same weights and real batches for all, interleaved step by step (order reversed every other step)."""
    import copy

    from .module import DetectionDataModule, DetectionModule

    dm = DetectionDataModule({**cfg["dataset"], "workers": 0}, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    models, opts = {}, {}
    for name, (backbone_cl, all_cl) in LAYOUTS.items():
        torch.manual_seed(0)
        c = copy.deepcopy(dict(cfg))
        c["trainer"] = {**cfg["trainer"], "channels_last": backbone_cl}
        model = DetectionModule(c, dm.num_classes).model.train()
        if all_cl:
            model.to(memory_format=torch.channels_last)
        models[name] = model
        opts[name] = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    batches = [b for _, b in zip(range(steps + 1), dm.train_dataloader())]
    times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for k, (images, targets, _) in enumerate(batches):
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        for name in list(LAYOUTS) if k % 2 == 0 else list(reversed(LAYOUTS)):
            start = time.perf_counter()
            losses = models[name](images, targets)
            opts[name].zero_grad()
            sum(losses.values()).backward()
            opts[name].step()
            if k:  # the first step warms up
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(ts) for name, ts in times.items()}


@torch.no_grad()
def layout_rows(cfg: Mapping[str, Any], steps: int = 12) -> list[dict[str, Any]]:
    """:func:`layout_step_times` as table rows, each with its ratio to the backbone-channels-last step."""
    times = layout_step_times(cfg, steps)
    ref = times["backbone channels-last"]
    names = {"backbone": cfg["backbone"]["name"], "detector": cfg["detector"]["name"]}
    return [{**names, "layout": k, "ms_per_step": ms, "ratio": ms / ref} for k, ms in times.items()]


def r50_fpn_inference_ratio(side: int = 800, repeats: int = 5, channels_last: bool = True) -> dict[str, Any]:
    """One row: median seconds per image of ours and torchvision's R50-FPN (same random weights, FrozenBN), ratios.

    Both models are in eval mode, resize to the same ``min_size=side`` (torchvision's 800 / 1333 at ``side=800``)
    and see the same ``side x 4/3 side`` image; the order alternates each repeat (ours first, then torchvision
    first) so neither always runs on a warmer cache.
    ``ratio`` is our time / torchvision's (< 1: ours is faster). ``cpu_ratio`` is the same for the process CPU time
    (all threads), which other jobs on a shared machine disturb far less than the wall time. ``channels_last`` is
    our backbone's layout (``backbones.create_model``'s default True; torchvision's stays contiguous).
    """
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    from backbones.benchmark import interleaved

    from .models import build_detector, convert_torchvision_state_dict

    size = {"min_size": side, "max_size": round(side * 1333 / 800)}  # torchvision's 800 / 1333 at side=800
    tv = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91, **size).eval()
    ours = build_detector(
        "resnet50", {"name": "faster_rcnn", **size}, 90, norm="frozen_bn", channels_last=channels_last
    ).eval()
    ours.load_state_dict(convert_torchvision_state_dict(ours, tv.state_dict()))
    image = [torch.rand(3, side, side * 4 // 3, generator=torch.Generator().manual_seed(0))]
    ours(image), tv(image)  # warm-up
    (w_ours, w_tv), (c_ours, c_tv) = interleaved([lambda: ours(image), lambda: tv(image)], repeats)
    a, b = statistics.median(w_ours) / 1000, statistics.median(w_tv) / 1000
    ca, cb = statistics.median(c_ours) / 1000, statistics.median(c_tv) / 1000
    layout = "channels-last" if channels_last else "contiguous"
    return {"side": side, "layout": layout, "repeats": repeats, "ours_s": a, "torchvision_s": b, "ratio": a / b,
            "ours_cpu_s": ca, "torchvision_cpu_s": cb, "cpu_ratio": ca / cb}  # fmt: skip
