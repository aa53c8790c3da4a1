"""The model zoo table: every registered model measured on its own module against its card's reference figures.

Models are built on the ``meta`` device, so counting parameters and mult-adds of the whole zoo allocates nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .profile import count_macs, count_params
from .registry import list_models, model_card


@dataclass(frozen=True)
class ZooRow:
    name: str
    family: str
    input_size: int
    params: int
    macs: int
    ref_params: int
    ref_macs: int | None
    paper_params: float | None
    paper_macs: float | None
    top1: float | None
    levels: str
    twins: str
    table: str
    reference_padding: bool = False

    @property
    def params_dev(self) -> float:
        return (self.params - self.ref_params) / self.ref_params

    @property
    def macs_dev(self) -> float | None:
        return None if not self.ref_macs else (self.macs - self.ref_macs) / self.ref_macs


@functools.cache  # a registered name never changes its builder or card; the table and the plot share the counts
def zoo_row(name: str) -> ZooRow:
    from . import create_model

    card = model_card(name)
    # count on the padding the reference figures were counted on (the default pads some stems for exact levels)
    padding = {"reference_padding": True} if card.macs_reference_padding else {}
    with torch.device("meta"):
        model = create_model(name, num_classes=card.num_classes, **padding)
    params = count_params(model)
    macs = count_macs(model, card.input_size)
    levels = " ".join(f"{f.name}:{f.channels}/{f.stride}" for f in model.feature_info)
    twins = ", ".join(f"{lib}:{n}" for lib, n in card.twins.items())
    return ZooRow(
        name,
        card.family,
        card.input_size,
        params,
        macs,
        card.params,
        card.macs,
        card.paper_params,
        card.paper_macs,
        card.top1,
        levels,
        twins,
        card.table,
        card.macs_reference_padding,
    )


def zoo_rows(pattern: str = "*") -> list[ZooRow]:
    return [zoo_row(n) for n in list_models(pattern)]


def _fmt_paper(value: float | None, scale: float, unit: str) -> str:
    return "" if value is None else f"{value / scale:.4g}{unit}"


def markdown_table(rows: list[ZooRow]) -> str:
    """The zoo as a Markdown table (what the README shows)."""
    head = (
        "| model | input | params (M) | mult-adds (G) | reference params / MACs | dev. params / MACs | paper | top-1 "
        "| levels name:channels/stride | twins |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        ref = f"{r.ref_params / 1e6:.3f} M / " + ("–" if r.ref_macs is None else f"{r.ref_macs / 1e9:.3f} G")
        dev = f"{100 * r.params_dev:+.2f}% / " + ("–" if r.macs_dev is None else f"{100 * r.macs_dev:+.2f}%")
        paper = " / ".join(s for s in (_fmt_paper(r.paper_params, 1e6, " M"), _fmt_paper(r.paper_macs, 1e9, " G")) if s)
        top1 = "" if r.top1 is None else f"{r.top1:.1f}"
        mark = "†" if r.reference_padding else ""
        lines.append(
            f"| `{r.name}` | {r.input_size} | {r.params / 1e6:.3f} | {r.macs / 1e9:.3f}{mark}"
            f" | {ref} | {dev} | {paper} "
            f"| {top1} | {r.levels} | {r.twins} |"
        )
    if any(r.reference_padding for r in rows):
        lines.append("\n† counted with `reference_padding=True`, the padding the reference figure was counted on.")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, start: str = "<!-- zoo:start -->", end: str = "<!-- zoo:end -->"):
    """``text`` with everything between the two marker lines replaced by ``table``."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {start!r} ... {end!r} not found in order")
    return text[: i + len(start)] + "\n" + table + "\n" + text[j:]
