"""Model registry: name -> (builder, model card).

A model is registered once, at the bottom of its family file, with a literal name and a :class:`ModelCard` that
records the paper's numbers and where they come from. ``create_model`` validates options against the builder's
signature, so an unknown option is an error rather than silently ignored.
"""

from __future__ import annotations

import fnmatch
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .checks import check_choice, check_int, did_you_mean

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
        references: the values ``reference=`` accepts besides None (the default: exact ``H / 2**i`` levels), each
            naming whose numerics the model then reproduces exactly (``"timm"``, ``"torchvision"``, ``"tf"``,
            ``"keras"``, ``"megvii"``, ``"caffe"``; see ``docs/weights.md``).
        padding_reference: the reference ``reference_padding=True`` stands for (the twin's, where there is one).
        sources: the published ImageNet weights of this network (:class:`backbones.weights.sources.Source`: URL,
            published hash, license, the top-1 the source reports, its ``reference``), as data.
        default_source: the source ``pretrained=True`` fetches.
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
    references: tuple[str, ...] = ()
    padding_reference: str | None = None
    sources: tuple[Any, ...] = ()
    default_source: str | None = None

    def source(self, name: str) -> Any:
        """The published source called ``name`` (``"keras"``, ``"cadene"``, ...).

        Raises:
            ValueError: naming the valid sources of this model.
        """
        for s in self.sources:
            if s.name == name:
                return s
        names = [s.name for s in self.sources]
        valid = f"this model's published sources are {', '.join(map(repr, names))}" if names else "it has none"
        raise ValueError(f"pretrained={name!r} is not a published source of this model; {valid}")

    @property
    def num_params_m(self) -> float:
        return self.params / 1e6


# The card fields every model of one kind of data shares, so a card states none of them (see :func:`make_card`).
CARD_PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {},  # the ModelCard defaults: 224 px, 1000 classes, ImageNet mean/std, crop 0.875
    # weights ported from TensorFlow (NASNet, PNASNet, Xception, MobileNet v1) take inputs in [-1, 1]
    "inception": {"mean": INCEPTION_MEAN, "std": INCEPTION_STD},
    # CIFAR-10 classifiers: 32 px, 10 classes, no crop, strides 1..4 only (not detection backbones)
    "cifar": {
        "input_size": 32,
        "num_classes": 10,
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "crop_pct": 1.0,
        "detection_ready": False,
    },
}


def make_card(preset: str = "imagenet", **fields: Any) -> ModelCard:
    """A :class:`ModelCard` with the fields of ``CARD_PRESETS[preset]`` filled in.

    Raises:
        ValueError: for an unknown preset.
        TypeError: when ``fields`` repeats a field the preset sets (say it once, in the preset).
    """
    check_choice("preset", preset, CARD_PRESETS)
    repeated = sorted(set(fields) & set(CARD_PRESETS[preset]))
    if repeated:
        raise TypeError(f"make_card(preset={preset!r}) already sets {', '.join(repeated)}; do not pass them again")
    return ModelCard(**CARD_PRESETS[preset], **fields)


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
    from .weights.sources import with_weights  # pure data; the weights package imports nothing of the registry

    site = _caller_site()
    card = with_weights(name, card)
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
        hint = did_you_mean(name, _REGISTRY, n=5, cutoff=0.5)
        raise KeyError(f"unknown model {name!r}{hint}; list_models() gives all {len(_REGISTRY)} names")
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
        hints = [f"{opt!r}{did_you_mean(opt, valid)}" for opt in unknown]
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


#: every value ``reference=`` can take besides None, and what it reproduces (docs/weights.md)
REFERENCES: dict[str, str] = {
    "timm": "the timm twin's numerics (its padding, pooling and BN eps)",
    "torchvision": "the torchvision twin's numerics",
    "tf": "TensorFlow: 'SAME' padding (the extra row/column at the bottom/right on stride 2), average pools that "
    "exclude the padding, TF BN eps (TF-slim, Keras applications as published, the ENAS code)",
    "keras": "the network of the Keras 3 applications code, where it differs from the TF original it was ported from",
    "megvii": "megvii-model/ShuffleNet-Series (their channel-shuffle order)",
    "caffe": "the authors' Caffe prototxt",
}


def resolve_reference(
    reference: str | None, reference_padding: bool, accepted: tuple[str, ...], padding_alias: str | None
) -> str | None:
    """The reference a family builds: ``reference``, or ``padding_alias`` for the legacy ``reference_padding=True``.

    Raises:
        ValueError: for a reference this family cannot reproduce, naming the accepted ones, or for
            ``reference_padding=True`` combined with another reference.
    """
    if reference is not None and reference not in accepted:
        hint = did_you_mean(reference, accepted, n=2, cutoff=0.5)
        raise ValueError(
            f"reference={reference!r} is not valid{hint}; accepted: None (exact H / 2**i levels)"
            + "".join(f", {r!r}" for r in accepted)
        )
    if reference_padding:
        if reference is not None and reference != padding_alias:
            raise ValueError(
                f"reference_padding=True stands for reference={padding_alias!r}; it cannot be combined with "
                f"reference={reference!r} (pass only reference=)"
            )
        return padding_alias
    return reference
