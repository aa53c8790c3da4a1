"""The zoo as a picture: each paper's published top-1 against the mult-adds and the parameters we measure on the
module (the NASNet paper's Fig. 5 layout: log-scale x, one marker per family, every point labelled).

matplotlib is imported inside :func:`plot_zoo` with the Agg backend (no display needed); ``backbones`` itself
depends on torch only. ``pip install -e ".[dev]"`` installs matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .checks import check_choice
from .registry import model_card
from .zoo import ZooRow, zoo_rows

#: legend names of the family files
FAMILY_LABELS = {
    "resnext": "ResNet / ResNeXt / SE-Net",
    "densenet": "DenseNet",
    "mobilenet": "MobileNet v1",
    "shufflenet": "ShuffleNet v1",
    "squeezenet": "SqueezeNet",
    "xception": "Xception",
    "nas": "NASNet-A / PNASNet-5 / ENAS",
}
#: what a card's top-1 is measured on, by its classifier size (ModelCard.num_classes)
DATASETS = {1000: "ImageNet top-1 (%)", 10: "CIFAR-10 accuracy (%)"}
_MARKERS = "osD^vP*Xh<>p"
_DPI = 110
_FONT = 6.5  # label size in points


def _label(ax: Any, points: list[tuple[float, ZooRow]]) -> None:
    """Name every point; a label that would overlap one already placed moves down a line, with a leader line."""
    to_pt = 72 / ax.figure.dpi
    ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits that transData maps with
    placed: list[tuple[float, float, float]] = []  # (x, y, width) of each label's lower-left corner, in points
    for x, r in sorted(points, key=lambda p: (-p[1].top1, p[0])):
        px, py = (v * to_pt for v in ax.transData.transform((x, r.top1)))
        width, dy = 0.6 * _FONT * len(r.name), 3.0
        while any(
            abs(py + dy - qy) < _FONT * 1.1 and px + 4 < qx + qw and qx < px + 4 + width for qx, qy, qw in placed
        ):
            dy -= _FONT * 1.15
        placed.append((px + 4, py + dy, width))
        arrow = {"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if dy < 0 else None
        ax.annotate(r.name, (x, r.top1), xytext=(4, dy), textcoords="offset points", fontsize=_FONT, arrowprops=arrow)


def plotted_rows(rows: Sequence[ZooRow] | None = None) -> list[ZooRow]:
    """The zoo rows (all registered models when None) whose card has a published top-1."""
    return [r for r in (zoo_rows() if rows is None else rows) if r.top1 is not None]


def plot_zoo(path: str | os.PathLike | None = None, rows: Sequence[ZooRow] | None = None) -> Any:
    """Draw top-1 against measured mult-adds (left) and parameters (right), one row of panels per dataset the
    top-1 figures are on (ImageNet, CIFAR-10: their accuracies are not comparable), and save it to ``path``.

    Args:
        path: where to write the image (format from the suffix, e.g. ``.png``); None draws without saving.
        rows: the zoo rows to draw from (default: every registered model); those without a top-1 are left out.

    Returns:
        The ``matplotlib.figure.Figure``; each panel holds one scatter collection per family.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure

    fmt = None if path is None else os.path.splitext(os.fspath(path))[1][1:].lower()
    if path is not None:
        check_choice(f"the suffix of {os.fspath(path)!r}", fmt, FigureCanvasBase.get_supported_filetypes())
    rows = plotted_rows(rows)
    by_dataset: dict[int, list[ZooRow]] = {}
    for r in rows:
        by_dataset.setdefault(model_card(r.name).num_classes, []).append(r)
    datasets = sorted(by_dataset, reverse=True)  # ImageNet first
    families = sorted({r.family for r in rows})
    style = {f: _MARKERS[i % len(_MARKERS)] for i, f in enumerate(families)}
    colours = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(14, 6.2 * len(datasets)), dpi=_DPI, layout="constrained")
    axes = fig.subplots(len(datasets), 2, squeeze=False)
    for row_axes, classes in zip(axes, datasets):
        for ax, (key, xlabel) in zip(row_axes, (("macs", "mult-adds (millions)"), ("params", "parameters (millions)"))):
            points = []
            for i, family in enumerate(families):
                pts = [(getattr(r, key) / 1e6, r) for r in by_dataset[classes] if r.family == family]
                if pts:
                    ax.scatter([x for x, _ in pts], [r.top1 for _, r in pts], marker=style[family], s=42,
                               color=colours(i % 10), label=FAMILY_LABELS.get(family, family), zorder=3)  # fmt: skip
                    points += pts
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + (" at the card's input size" if key == "macs" else ""))
            ax.set_ylabel(DATASETS.get(classes, f"{classes}-class top-1 (%)"))
            ax.grid(True, which="both", alpha=0.3)
            _label(ax, points)
        row_axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Published top-1 (model cards) against mult-adds and parameters measured on our modules")
    if path is not None:
        from .atomic import atomic_write

        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=_DPI, metadata={"Software": None}))
    return fig
