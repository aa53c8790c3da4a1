"""The backbone contract every family implements.

A :class:`Backbone` is at once an ImageNet/CIFAR classifier and a multi-scale feature extractor:

* ``feature_info`` lists every level the network has (``c<i>`` has stride ``2**i``), known at construction and
  validated once (strides double from level to level);
* ``configure(features_only=..., out_features=..., norm=..., frozen_stages=...)`` (called by ``create_model``) turns
  it into a feature extractor returning an ordered dict of the requested levels, swaps norms and freezes stages;
* chain-shaped networks put their modules, in execution order, in ``self.body`` (an ``nn.ModuleDict``) and get
  ``forward_features``/``forward_levels`` from this class; graph-shaped ones (NASNet cells) override them.

A subclass builds ``body`` (or its own modules), calls :meth:`add_feature` for each level in increasing stride,
sets ``num_features`` and implements :meth:`forward_head`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check, check_choice, did_you_mean
from .layers import NORMS, convert_norm, is_norm


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level: ``name`` is ``c<log2(stride)>``; ``module`` the dotted name that produces it;
    ``stage`` the index ``frozen_stages`` counts (0 = stem)."""

    name: str
    channels: int
    stride: int
    module: str
    stage: int


class Backbone(nn.Module):
    """Base class of every registered network; see the module docstring for the subclass contract."""

    #: names of the classification-head submodules, deleted when ``features_only=True``
    head_modules: tuple[str, ...] = ("fc",)
    #: the classifier submodule that ``reset_classifier`` replaces
    classifier_name: str = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.feature_info: list[FeatureInfo] = []
        self.features_only = False
        self.out_features: tuple[str, ...] = ()
        self.frozen_stages = -1
        self.norm = "bn"
        self.num_features = 0
        self.num_classes = 0
        self._taps: dict[str, str] = {}

    # ---- construction -------------------------------------------------------------------------------------------
    def add_feature(self, channels: int, stride: int, module: str, stage: int | None = None) -> None:
        """Record a level; call in order of increasing stride, as the modules are built."""
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"feature stride {stride} of {module!r} is not a power of two")
        if self.feature_info:
            prev = self.feature_info[-1]
            if stride != 2 * prev.stride:
                raise ValueError(
                    f"feature strides must double: {prev.name} (stride {prev.stride}) is followed by stride {stride}"
                )
        level = stride.bit_length() - 1
        if stage is None:
            stage = max(level - 1, 0)
        self.feature_info.append(FeatureInfo(f"c{level}", int(channels), stride, module, stage))

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.feature_info]

    @property
    def detection_ready(self) -> bool:
        return {"c2", "c3", "c4", "c5"} <= set(self.feature_names)

    def default_out_features(self) -> tuple[str, ...]:
        if self.detection_ready:
            return ("c2", "c3", "c4", "c5")
        return tuple(self.feature_names)

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of each requested level (all levels when not a feature extractor), before any forward."""
        names = self.out_features or tuple(self.feature_names)
        return {f.name: f.channels for f in self.feature_info if f.name in names}

    @property
    def out_strides(self) -> dict[str, int]:
        names = self.out_features or tuple(self.feature_names)
        return {f.name: f.stride for f in self.feature_info if f.name in names}

    @property
    def size_divisibility(self) -> int:
        """Input sides must be a multiple of this for every level to be exactly ``H / stride``."""
        return max(self.out_strides.values())

    def feature(self, name: str) -> FeatureInfo:
        for f in self.feature_info:
            if f.name == name:
                return f
        raise KeyError(self._bad_level(name))

    def _bad_level(self, name: str) -> str:
        valid = self.feature_names
        return f"unknown feature level {name!r}{did_you_mean(name, valid, n=2)}; this model has {', '.join(valid)}"

    # ---- configuration (create_model calls this after weights are loaded) ------------------------------------------
    def configure(
        self,
        features_only: bool = False,
        out_features: tuple[str, ...] | list[str] | None = None,
        norm: str = "bn",
        frozen_stages: int = -1,
    ) -> Backbone:
        """Turn into a feature extractor, swap norms and freeze stages (in that order of validation)."""
        check_choice("norm", norm, NORMS)
        num_stages = max(f.stage for f in self.feature_info)
        check(
            "frozen_stages",
            frozen_stages,
            isinstance(frozen_stages, int) and -1 <= frozen_stages <= num_stages,
            f"use -1 (none), 0 (stem) or 1..{num_stages} (stem and that many stages)",
        )
        if out_features is not None and not features_only:
            raise ValueError("out_features is only used with features_only=True")
        if features_only:
            if isinstance(out_features, str):
                out_features = (out_features,)
            names = tuple(out_features) if out_features is not None else self.default_out_features()
            if not names:
                raise ValueError("out_features is empty; give at least one level")
            for n in names:
                if n not in self.feature_names:
                    raise ValueError(self._bad_level(n))
            order = self.feature_names
            self.out_features = tuple(sorted(set(names), key=order.index))
            self.features_only = True
            self._prune_for_features()
        self._taps = {f.module.removeprefix("body."): f.name for f in self.feature_info if f.name in self.out_features}
        if norm != "bn":
            convert_norm(self, norm)
            self.norm = norm
        self.frozen_stages = frozen_stages
        if frozen_stages >= 0:
            self._freeze(frozen_stages)
        return self

    def _prune_for_features(self) -> None:
        """Delete the head, and the body modules after the deepest requested level (they would never run)."""
        for name in self.head_modules:
            if hasattr(self, name):
                delattr(self, name)
        body = getattr(self, "body", None)
        if isinstance(body, nn.ModuleDict):
            deepest = max((self.feature(n) for n in self.out_features), key=lambda f: f.stride)
            last = deepest.module.removeprefix("body.")
            keys = list(body.keys())
            for k in keys[keys.index(last) + 1 :]:
                del body[k]

    def stage_modules(self) -> list[list[str]]:
        """Top-level module names of the stem (index 0) and of each stage, for ``frozen_stages``.

        Default for chain networks: a ``body`` entry belongs to the stage of the first level produced at or after it.
        """
        body = self.body  # graph-shaped subclasses override this method
        keys = list(body.keys())
        mods = [(f.module.removeprefix("body."), f.stage) for f in self.feature_info]
        taps = [(keys.index(m), s) for m, s in mods if m in keys]
        num_stages = max(f.stage for f in self.feature_info) + 1
        stages: list[list[str]] = [[] for _ in range(num_stages)]
        for i, k in enumerate(keys):
            stage = next((s for idx, s in taps if idx >= i), num_stages - 1)
            stages[stage].append(f"body.{k}")
        return stages

    def make_box_head(self, level: str = "c4") -> nn.Module:
        """Move the stages after ``level`` out of this feature extractor into a module run on each RoI.

        Faster R-CNN "C4" (ResNet paper's detection setup, NASNet paper section 4.3): the shared trunk ends at
        ``level`` (stride 16) and the last stage is the box head. Call on a ``features_only`` model that still holds
        the deepest level; afterwards this network returns only ``level``. The returned module maps an RoI feature
        ``(R, channels of level, h, w)`` to ``(R, out_channels, h', w')`` and has an ``out_channels`` attribute.
        Default for chain networks (``self.body``); graph-shaped networks override it.
        """
        body = getattr(self, "body", None)
        if not isinstance(body, nn.ModuleDict):
            raise NotImplementedError(f"{type(self).__name__} is not a chain network; it must override make_box_head")
        if not self.features_only:
            raise ValueError("make_box_head needs a features_only model (create_model(..., features_only=True))")
        keys = list(body.keys())
        tap = self.feature(level).module.removeprefix("body.")
        tail = keys[keys.index(tap) + 1 :]
        if not tail:
            raise ValueError(f"no stage runs after {level!r}; keep a deeper level in out_features to build a box head")
        deepest = [f for f in self.feature_info if f.module.removeprefix("body.") in tail][-1]
        head = nn.Sequential(OrderedDict((k, body[k]) for k in tail))
        head.out_channels = deepest.channels
        for k in tail:
            del body[k]
        self.out_features = (level,)
        self._taps = {tap: level}
        return head

    def _frozen_modules(self) -> list[nn.Module]:
        names = [n for stage in self.stage_modules()[: self.frozen_stages + 1] for n in stage]
        mods = dict(self.named_modules())
        return [mods[n] for n in names if n in mods]

    def _freeze(self, frozen_stages: int) -> None:
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Like ``nn.Module.train`` but keeps the norms of frozen stages in eval mode."""
        super().train(mode)
        if mode and self.frozen_stages >= 0:
            for m in self._frozen_modules():
                for sub in m.modules():
                    if is_norm(sub):
                        sub.eval()
        return self

    # ---- forward ---------------------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map before global pooling."""
        for module in self.body.values():
            x = module(x)
        return x

    def forward_levels(self, x: Tensor) -> dict[str, Tensor]:
        """The requested levels, ordered from high to low resolution."""
        out: dict[str, Tensor] = OrderedDict()
        for name, module in self.body.items():
            x = module(x)
            if name in self._taps:
                out[self._taps[name]] = x
        return out

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def check_input_size(self, x: Tensor) -> None:
        """Raise naming the minimum side when ``x`` is smaller than the deepest requested level's stride.

        A level of stride ``s`` has ``H / s`` rows: below ``s`` pixels it would be less than one, and the network
        either fails inside some layer or returns maps made of padding. The minimum comes from ``out_strides``.
        Skipped while tracing, scripting or compiling (the shapes there are symbolic; traced graphs stay as they were).
        """
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if isinstance(x, torch.fx.Proxy):
            return
        side = self.size_divisibility
        if x.shape[-2] < side or x.shape[-1] < side:
            deepest = max(self.out_strides, key=self.out_strides.__getitem__)
            name = getattr(self, "model_name", type(self).__name__)
            raise ValueError(
                f"input of {x.shape[-2]}x{x.shape[-1]} px is too small for {name} returning "
                f"{', '.join(self.out_features)}: level {deepest} has stride {side}, so each side must be at least "
                f"{side} px (a multiple of {side} for exact H / stride maps)"
            )

    def forward(self, x: Tensor) -> Any:
        if self.features_only:
            self.check_input_size(x)
            return self.forward_levels(x)
        return self.forward_head(self.forward_features(x))

    # ---- classifier helpers ----------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0 = identity)."""
        old = self.get_classifier()
        if isinstance(old, nn.Conv2d):
            new: nn.Module = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, bias=old.bias is not None)
        else:
            new = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, new)
        self.num_classes = num_classes

    # ---- weights ---------------------------------------------------------------------------------------------------
    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a twin's (timm / torchvision) state dict onto this module's names; identity by default."""
        return state_dict

    @torch.no_grad()
    def init_weights(self) -> None:
        """Kaiming-normal convs, unit/zero norms, small linear weights (the torchvision/timm defaults)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:  # ENAS classifiers have no bias
                    nn.init.zeros_(m.bias)
