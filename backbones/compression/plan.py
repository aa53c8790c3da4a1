"""What to compress and how much: per-parameter density (pruning) and codebook bits (weight sharing).

A plan is data: an ordered list of ``(pattern, density, bits)`` rules over parameter names (shell-style patterns,
first match wins) and the defaults for the weights no rule names. Only weights of convolutions and linear layers
(parameters with two or more dimensions) are pruned and shared; biases and norm parameters are stored as they are.
SqueezeNet's per-layer table (Iandola et al. 2016, Table 1 "sparsity" and "# bits" columns) ships as the config
``conf/compression/squeezenet1_0.yaml``; any model takes a plan of the same form.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checks import check, check_keys

PLAN_KEYS = ("name", "source", "bits", "density", "index_bits", "layers")
RULE_KEYS = ("pattern", "density", "bits")


@dataclass(frozen=True)
class LayerRule:
    """Parameters whose name matches ``pattern`` keep the ``density`` largest-magnitude weights and share
    ``2**bits`` values (``bits=None``: no sharing, float32 values)."""

    pattern: str
    density: float
    bits: int | None


@dataclass(frozen=True)
class CompressionPlan:
    """Rules for every compressible weight of a model.

    Attributes:
        rules: first matching rule wins.
        density, bits: for weights no rule matches (1.0 / None: stored as they are).
        index_bits: width of the sparse-position differences before Huffman coding, for convolutions and linear
            layers (Han et al. 2015, section 3: 8 bits for conv layers, 5 bits for fully-connected layers).
    """

    rules: tuple[LayerRule, ...] = ()
    density: float = 1.0
    bits: int | None = None
    index_bits: tuple[int, int] = (8, 5)
    name: str = "plan"

    def rule_for(self, name: str) -> LayerRule:
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.pattern):
                return rule
        return LayerRule("*", self.density, self.bits)

    def targets(self, model: nn.Module) -> dict[str, LayerRule]:
        """The compressible parameters of ``model`` (conv / linear weights) and the rule of each.

        Raises:
            ValueError: a rule that matches no compressible parameter (a typo would silently compress nothing).
        """
        weights = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
        for rule in self.rules:
            if not any(fnmatch.fnmatchcase(n, rule.pattern) for n in weights):
                sample = ", ".join(list(weights)[:4])
                raise ValueError(
                    f"compression plan {self.name!r}: pattern {rule.pattern!r} matches no conv/linear weight of "
                    f"{getattr(model, 'model_name', type(model).__name__)!r} (names look like {sample}, ...)"
                )
        return {n: self.rule_for(n) for n in weights}

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> CompressionPlan:
        """A plan from its config form (``conf/compression/*.yaml``): ``bits``, ``density``, ``index_bits``
        (``{conv: 8, linear: 5}``) and ``layers`` (a list of ``{pattern, density, bits}``; bits default to the
        plan's)."""
        cfg = dict(cfg)
        check_keys(cfg, PLAN_KEYS, "compression")
        bits = cfg.get("bits")
        rules = []
        for i, row in enumerate(cfg.get("layers") or []):
            check_keys(row, RULE_KEYS, f"compression.layers[{i}]")
            rules.append(LayerRule(str(row["pattern"]), float(row.get("density", 1.0)), row.get("bits", bits)))
        index = dict(cfg.get("index_bits") or {})
        check_keys(index, ("conv", "linear"), "compression.index_bits")
        plan = cls(
            tuple(rules),
            float(cfg.get("density", 1.0)),
            bits,
            (int(index.get("conv", 8)), int(index.get("linear", 5))),
            str(cfg.get("name", "plan")),
        )
        plan.validate()
        return plan

    def validate(self) -> None:
        for rule in (*self.rules, LayerRule("default", self.density, self.bits)):
            where = f"compression rule {rule.pattern!r}"
            check(f"{where}: density", rule.density, 0.0 < rule.density <= 1.0, "use a fraction in (0, 1]")
            check(
                f"{where}: bits",
                rule.bits,
                rule.bits is None or (isinstance(rule.bits, int) and 1 <= rule.bits <= 16),
                "use an integer from 1 to 16, or null for no weight sharing",
            )
        for b in self.index_bits:
            check("compression.index_bits", self.index_bits, isinstance(b, int) and 2 <= b <= 16, "use 2..16 bits")
