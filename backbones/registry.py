"""Model registry: name -> (builder, model card).

A model is registered once, at the bottom of its family file, with a literal name and a :class:`ModelCard` that
records the paper's numbers and where they come from. ``create_model`` validates options against the builder's
signature, so an unknown option is an error rather than silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .checks import check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # TF-ported weights (NASNet, PNASNet, Xception)
INCEPTION_STD = (0.5, 0.5, 0.5)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelCard:
    """What the papers and reference implementations say about one registered model.

    Attributes:
        family: family file name, e.g. ``"densenet"``.
        paper: short citation with arXiv id.
        table: where ``params``/``macs`` come from (paper table or reference computation).
        params: reference trainable parameter count (BN running stats excluded), classifier included.
        macs: reference multiply-accumulates at ``input_size`` (conv + linear), or None when unknown.
        input_size: the paper's square input side.
        num_classes: classifier size the counts refer to (1000 ImageNet, 10 CIFAR-10).
        top1: the paper's single-crop top-1 accuracy in percent, if published.
        mean, std: input normalisation of the reference weights.
        crop_pct: centre-crop ratio used for evaluation.
        twins: names of the same network in timm / torchvision, when one exists.
        detection_ready: True for ImageNet models (strides 4..32), False for CIFAR models.
        paper_params, paper_macs: the figures printed in the paper when they differ from ``params``/``macs``.
        macs_at: extra reference MAC counts at other input sizes, ``{side: macs}``.
        params_tol, macs_tol: relative tolerance the faithfulness test allows.
        macs_reference_padding: ``macs``/``macs_at`` were counted on the original padding, so the test counts the
            model built with ``reference_padding=True`` (where the default pads for exact ``H / 2**i`` levels and so
            computes on larger maps, e.g. SqueezeNet's valid conv1).
        notes: discrepancies between sources, deliberate deviations.
    """

    family: str
    paper: str
    table: str
    params: int
    macs: int | None
    input_size: int = 224
    num_classes: int = 1000
    top1: float | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    twins: dict[str, str] = field(default_factory=dict)
    detection_ready: bool = True
    paper_params: float | None = None
    paper_macs: float | None = None
    macs_at: dict[int, int] = field(default_factory=dict)
    params_tol: float = 0.005
    macs_tol: float = 0.02
    macs_reference_padding: bool = False
    notes: str = ""

    @property
    def num_params_m(self) -> float:
        return self.params / 1e6


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., Any]
    card: ModelCard
    defaults: dict[str, Any]
    site: str


_REGISTRY: dict[str, _Entry] = {}

# Options handled by create_model itself, not passed to the builder.
FACTORY_OPTIONS = ("pretrained", "features_only", "out_features", "norm", "frozen_stages", "channels_last")


def _caller_site(depth: int = 3) -> str:
    frame = traceback.extract_stack(limit=depth)[0]
    return f"{frame.filename}:{frame.lineno}"


def register_model(name: str, builder: Callable[..., Any], card: ModelCard, **defaults: Any) -> None:
    """Register ``builder(**defaults, **options)`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered (both registration sites are named).
    """
    site = _caller_site()
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice: first at {_REGISTRY[name].site}, again at {site}")
    _REGISTRY[name] = _Entry(name, builder, card, dict(defaults), site)


def list_models(pattern: str = "*", *, detection_ready: bool | None = None, family: str | None = None) -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (e.g. ``"nasnet*"``)."""
    names = []
    for name, entry in _REGISTRY.items():
        if not fnmatch.fnmatch(name, pattern):
            continue
        if detection_ready is not None and entry.card.detection_ready != detection_ready:
            continue
        if family is not None and entry.card.family != family:
            continue
        names.append(name)
    return sorted(names)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(
            f"model name {name!r} ({type(name).__name__}) is not valid; give a registered name as a string, e.g. "
            f"'resnet50'. list_models() gives all {len(_REGISTRY)} names"
        )
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}. list_models() gives all {len(_REGISTRY)} names")
    return _REGISTRY[name]


def model_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a registered model."""
    return _entry(name).card


def model_defaults(name: str) -> dict[str, Any]:
    """The family arguments a registered variant fixes (its row of the family table)."""
    return dict(_entry(name).defaults)


def builder_options(name: str) -> list[str]:
    """Every option ``create_model(name, ...)`` accepts."""
    entry = _entry(name)
    params = inspect.signature(entry.builder).parameters
    return sorted({p for p in params if p not in ("self", "args", "kwargs")} | set(FACTORY_OPTIONS))


def build(name: str, options: dict[str, Any]) -> Any:
    """Instantiate the builder of ``name`` with its defaults overridden by ``options`` (factory options removed)."""
    entry = _entry(name)
    valid = builder_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        hints = []
        for opt in unknown:
            close = difflib.get_close_matches(opt, valid, n=3, cutoff=0.6)
            hints.append(f"{opt!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise TypeError(f"unknown option(s) for {name!r}: {'; '.join(hints)}. Valid options: {', '.join(valid)}")
    # checked here, once for every family, before any layer is built
    if "num_classes" in options:
        check_int("num_classes", options["num_classes"], 0, meaning="0 = no classifier: the pooled features")
    if "in_chans" in options:
        check_int("in_chans", options["in_chans"], 1, meaning="input image channels, 3 for RGB")
    kwargs = {**entry.defaults, **{k: v for k, v in options.items() if k not in FACTORY_OPTIONS}}
    model = entry.builder(**kwargs)
    model.model_name = name
    return model
