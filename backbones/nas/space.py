"""Cell search spaces as data, the decision sequence every search strategy emits, and genotype JSON files.

A search space says what a cell may contain (Zoph et al. 2018, arXiv 1707.07012, section 3 and Fig. 3): B blocks,
each made of five decisions -- two hidden states (step 1, 2), one operation for each (step 3, 4) and a combine
(step 5). The normal and the reduction cell are searched together, so an architecture is ``2 x B x 5`` integers
(section 3: "the controller has 2 x 5B predictions in total"), laid out here as

    [normal block 0: left, right, left_op, right_op, combine, normal block 1: ..., reduce block 0: ..., ...]

with ``left``/``right`` indexing the states of :mod:`backbones.nas.genotypes` (0 = the most recent input h_i, 1 =
h_{i-1}, ..., then the block outputs in order), ops and combines indexing :attr:`SearchSpace.ops` /
:attr:`SearchSpace.combines`. That order is also the ENAS controller's (``micro_controller.py`` samples both indices,
then both ops of a node). A space with one combine still has the combine decision; it has one choice.

:func:`SearchSpace.decode` turns decisions into a :class:`~backbones.nas.genotypes.Genotype`, validated like every
other genotype; :func:`SearchSpace.encode` is its inverse. The spaces of the papers are in :data:`SPACES`:

* ``nasnet_a``: section 3's 13 operations, add / concat, B = 5, the unused block states concatenated ("all of the
  unused hidden states generated in the convolutional cell are concatenated together"), TF-slim conventions.
* ``enas_micro``: the ENAS micro space (``micro_child.py``, ``cifar10_micro_search.sh``: ``child_num_branches=5``,
  ``child_num_cells=5``): sep 3x3, sep 5x5, avg 3x3, max 3x3, identity; add only; every unused state concatenated,
  the two inputs included (``_enas_layer``: ``used`` spans ``num_cells + 2`` states); ENAS conventions.
* ``nasnet_b``: appendix B, Fig. 8: 4 inputs, B = 4, no concatenation -- every created state is emitted, output k
  to the k-th next cell; combines add, concat, add + layer norm, add + instance norm.
* ``nasnet_c``: appendix B, Fig. 9: NASNet-A's concatenation of unused states with NASNet-B's four combines (B is
  not stated for Fig. 9; 5 as section 3).

A subset (``ops=[...]``, ``combines=[...]``) or another B is made with :func:`build_space`. Genotype files are JSON
objects ``{"name", "normal", "reduce", "conventions", "source"}`` (:func:`genotype_to_dict`, :func:`read_genotype`);
writing them is the caller's (the search writes through the project's one atomic JSON writer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..checks import check, check_choice, check_keys, did_you_mean
from .genotypes import _ENAS_OPS, COMBINES, CONVENTIONS, GENOTYPES, OPS, Block, CellGenotype, Genotype, GenotypeError

#: how a sampled cell forms its output
OUTPUTS = (
    "concat_unused",  # ENAS: every state no block reads, the cell's inputs included
    "concat_unused_blocks",  # NASNet section 3: the unused states created in the cell
    "all_blocks",  # NASNet-B (appendix B): every created state emitted separately, none concatenated
)
DECISIONS = ("left", "right", "left_op", "right_op", "combine")  # one block's five steps (section 3)


@dataclass(frozen=True)
class SearchSpace:
    """What a searched cell may contain.

    Attributes:
        name: e.g. ``"enas_micro"``; names the genotypes decoded from this space.
        ops: the operations steps 3 and 4 choose from (names of :data:`backbones.nas.genotypes.OPS`).
        combines: what step 5 chooses from (:data:`backbones.nas.genotypes.COMBINES`).
        num_blocks: B.
        num_inputs: hidden states a cell takes (2; NASNet-B 4).
        output: one of :data:`OUTPUTS`.
        conventions: the reference code whose cell/network details the genotypes follow (``tf_slim`` or ``enas``).
        source: where the space comes from.
    """

    name: str
    ops: tuple[str, ...]
    combines: tuple[str, ...]
    num_blocks: int = 5
    num_inputs: int = 2
    output: str = "concat_unused_blocks"
    conventions: str = "tf_slim"
    source: str = ""

    def __post_init__(self) -> None:
        where = f"search space {self.name!r}"
        check(f"{where}: ops", self.ops, bool(self.ops), "give at least one operation")
        for op in self.ops:
            check_choice(f"{where}: op", op, OPS)
        check(f"{where}: ops", list(self.ops), len(set(self.ops)) == len(self.ops), "an op is listed twice")
        check(f"{where}: combines", self.combines, bool(self.combines), "give at least one combine")
        for c in self.combines:
            check_choice(f"{where}: combine", c, COMBINES)
        check(f"{where}: combines", list(self.combines), len(set(self.combines)) == len(self.combines), "listed twice")
        check(f"{where}: num_blocks", self.num_blocks, int(self.num_blocks) >= 1, "B must be at least 1")
        check(f"{where}: num_inputs", self.num_inputs, int(self.num_inputs) >= 1, "a cell takes at least 1 input")
        check_choice(f"{where}: output", self.output, OUTPUTS)
        check_choice(f"{where}: conventions", self.conventions, tuple(CONVENTIONS))
        if self.output == "all_blocks":
            check(
                f"{where}: num_blocks",
                self.num_blocks,
                self.num_blocks == self.num_inputs,
                f"a cell emitting every block state must create as many states as it takes (num_inputs="
                f"{self.num_inputs}; NASNet-B appendix B: 'these numbers must match')",
            )

    # ---- the decision sequence ------------------------------------------------------------------------------------
    @property
    def num_decisions(self) -> int:
        return 2 * self.num_blocks * len(DECISIONS)

    def choices(self) -> list[int]:
        """Number of choices of each decision, in sequence order (inputs grow with the block index)."""
        per_cell = []
        for b in range(self.num_blocks):
            states = self.num_inputs + b
            per_cell += [states, states, len(self.ops), len(self.ops), len(self.combines)]
        return per_cell * 2

    def kinds(self) -> list[str]:
        """What each decision chooses: ``"input"``, ``"op"`` or ``"combine"``, in sequence order."""
        kind = {"left": "input", "right": "input", "left_op": "op", "right_op": "op", "combine": "combine"}
        return [kind[d] for d in DECISIONS] * (2 * self.num_blocks)

    def sample_uniform(self, generator: torch.Generator | None = None) -> list[int]:
        """Decisions drawn uniformly and independently (the paper's random search, section 3)."""
        return [int(torch.randint(n, (1,), generator=generator)) for n in self.choices()]

    def check_decisions(self, decisions: Sequence[int]) -> list[int]:
        """The decisions as ints; raises naming the first one out of range."""
        decisions = [int(d) for d in decisions]
        check(
            f"{self.name} decisions",
            f"<{len(decisions)} values>",
            len(decisions) == self.num_decisions,
            f"this space takes 2 x B x 5 = {self.num_decisions} decisions",
        )
        for i, (d, n) in enumerate(zip(decisions, self.choices())):
            if not 0 <= d < n:
                cell, b, step = i // (5 * self.num_blocks), i % (5 * self.num_blocks) // 5, DECISIONS[i % 5]
                raise GenotypeError(
                    f"{self.name}: decision {i} ({('normal', 'reduce')[cell]} block {b} {step}) = {d} is out of "
                    f"range; valid: 0..{n - 1}"
                )
        return decisions

    def decode(self, decisions: Sequence[int], name: str | None = None) -> Genotype:
        """The genotype the decisions describe (validated by :class:`CellGenotype`)."""
        decisions = self.check_decisions(decisions)
        name = name or self.name
        per_cell = self.num_blocks * 5
        cells = []
        for c, kind in enumerate(("normal", "reduce")):
            d = decisions[c * per_cell : (c + 1) * per_cell]
            blocks = tuple(
                Block(d[i], self.ops[d[i + 2]], d[i + 1], self.ops[d[i + 3]], self.combines[d[i + 4]])
                for i in range(0, per_cell, 5)
            )
            cells.append(self._cell(f"{name}.{kind}", blocks))
        return Genotype(name, cells[0], cells[1], conventions=self.conventions, source=f"search space {self.name}")

    def encode(self, genotype: Genotype) -> list[int]:
        """The decisions of ``genotype`` in this space; raises naming what the space cannot express."""
        out: list[int] = []
        for cell in (genotype.normal, genotype.reduce):
            if cell.num_inputs != self.num_inputs or len(cell.blocks) != self.num_blocks:
                raise GenotypeError(
                    f"cell {cell.name!r} has {cell.num_inputs} inputs and {len(cell.blocks)} blocks; space "
                    f"{self.name!r} has {self.num_inputs} and {self.num_blocks}"
                )
            for blk in cell.blocks:
                for what, value, valid in (
                    ("op", blk.left_op, self.ops),
                    ("op", blk.right_op, self.ops),
                    ("combine", blk.combine, self.combines),
                ):
                    if value not in valid:
                        raise GenotypeError(f"cell {cell.name!r}: {what} {value!r} is not in space {self.name!r}")
                out += [blk.left, blk.right, self.ops.index(blk.left_op), self.ops.index(blk.right_op)]
                out.append(self.combines.index(blk.combine))
            if self._cell(cell.name, cell.blocks) != cell:
                raise GenotypeError(f"cell {cell.name!r}: its outputs are not what space {self.name!r} forms")
        return out

    def _cell(self, name: str, blocks: tuple[Block, ...]) -> CellGenotype:
        k = self.num_inputs
        if self.output == "all_blocks":
            return CellGenotype(name, blocks, outputs=tuple(range(k, k + len(blocks))), num_inputs=k)
        used = {b.left for b in blocks} | {b.right for b in blocks}
        first = 0 if self.output == "concat_unused" else k
        concat = tuple(s for s in range(first, k + len(blocks)) if s not in used)
        return CellGenotype(name, blocks, concat=concat, num_inputs=k)


SPACES: dict[str, SearchSpace] = {
    s.name: s
    for s in (
        SearchSpace("nasnet_a", OPS, ("add", "concat"), source="Zoph et al. 2018 section 3 (the 13-op list, Fig. 3)"),
        SearchSpace(
            "enas_micro",
            _ENAS_OPS,
            ("add",),
            output="concat_unused",
            conventions="enas",
            source="Pham et al. 2018; melodyguan/enas micro_child.py, scripts/cifar10_micro_search.sh",
        ),
        SearchSpace("nasnet_b", OPS, COMBINES, num_blocks=4, num_inputs=4, output="all_blocks", source="Zoph et al. "
                    "2018 appendix B, Fig. 8 (4 inputs, B = 4, every created state fed to the next layers)"),
        SearchSpace("nasnet_c", OPS, COMBINES, source="Zoph et al. 2018 appendix B, Fig. 9 (unused states "
                    "concatenated, normalised sums as NASNet-B)"),
    )
}  # fmt: skip


def build_space(
    name: str = "enas_micro",
    ops: Sequence[str] | None = None,
    combines: Sequence[str] | None = None,
    num_blocks: int | None = None,
) -> SearchSpace:
    """A space of :data:`SPACES`, optionally restricted to a subset of its ops / combines or with another B."""
    check_choice("search space", name, tuple(SPACES))
    base = SPACES[name]
    changes: dict[str, Any] = {}
    for field, value in (("ops", ops), ("combines", combines)):
        if value is not None:
            value = tuple(str(v) for v in value)
            for v in value:
                if v not in getattr(base, field):
                    raise ValueError(
                        f"search space {name!r}: {field[:-1]} {v!r} is not in it{did_you_mean(v, getattr(base, field))}"
                        f"; valid: {', '.join(getattr(base, field))}"
                    )
            changes[field] = value
    if num_blocks is not None:
        changes["num_blocks"] = int(num_blocks)
    if not changes:
        return base
    label = ",".join(f"{k}={len(v) if isinstance(v, tuple) else v}" for k, v in changes.items())
    return replace(base, name=f"{name}[{label}]", **changes)


# ---- genotype files ------------------------------------------------------------------------------------------------
GENOTYPE_KEYS = ("name", "normal", "reduce", "conventions", "source", "notes", "search")
CELL_KEYS = ("blocks", "concat", "outputs", "num_inputs")
BLOCK_KEYS = ("left", "left_op", "right", "right_op", "combine")


def cell_to_dict(cell: CellGenotype) -> dict[str, Any]:
    out: dict[str, Any] = {"blocks": [{k: getattr(b, k) for k in BLOCK_KEYS} for b in cell.blocks]}
    out["concat" if cell.concat else "outputs"] = list(cell.concat or cell.outputs)
    out["num_inputs"] = cell.num_inputs
    return out


def genotype_to_dict(genotype: Genotype, **search: Any) -> dict[str, Any]:
    """The JSON object of a genotype file; ``search`` (reward, decisions, ...) goes under ``"search"``."""
    g = genotype
    out = {"name": g.name, "normal": cell_to_dict(g.normal), "reduce": cell_to_dict(g.reduce)}
    out.update(conventions=g.conventions, source=g.source)
    if search:
        out["search"] = search
    return out


def _cell_from_dict(d: Any, name: str, where: str) -> CellGenotype:
    if not isinstance(d, Mapping):
        raise GenotypeError(f"{where}: expected an object with keys {', '.join(CELL_KEYS)}, got {type(d).__name__}")
    check_keys(d, CELL_KEYS, where)
    blocks = []
    for b, raw in enumerate(d.get("blocks") or []):
        if isinstance(raw, Mapping):
            check_keys(raw, BLOCK_KEYS, f"{where}.blocks[{b}]")
            missing = [k for k in BLOCK_KEYS[:4] if k not in raw]
            if missing:
                raise GenotypeError(f"{where}.blocks[{b}]: missing {', '.join(missing)}")
            blocks.append(Block(**{k: raw[k] for k in BLOCK_KEYS if k in raw}))
        elif isinstance(raw, list | tuple) and len(raw) in (4, 5):  # [left, left_op, right, right_op(, combine)]
            blocks.append(Block(*raw))
        else:
            raise GenotypeError(
                f"{where}.blocks[{b}]: expected {{{', '.join(BLOCK_KEYS)}}} or [left, left_op, right, right_op, "
                f"combine], got {raw!r}"
            )
    return CellGenotype(
        name,
        tuple(blocks),
        concat=tuple(d.get("concat") or ()),
        outputs=tuple(d.get("outputs") or ()),
        num_inputs=int(d.get("num_inputs", 2)),
    )


def genotype_from_dict(d: Mapping[str, Any], where: str = "genotype") -> Genotype:
    """A :class:`Genotype` from its JSON object; raises :class:`GenotypeError` naming ``where`` and the part."""
    if not isinstance(d, Mapping):
        raise GenotypeError(f"{where}: expected a JSON object with keys name, normal, reduce; got {type(d).__name__}")
    check_keys(d, GENOTYPE_KEYS, where)
    missing = [k for k in ("name", "normal", "reduce") if k not in d]
    if missing:
        raise GenotypeError(
            f"{where}: missing key(s) {', '.join(missing)} (a genotype file holds name, normal, reduce)"
        )
    name = str(d["name"])
    normal = _cell_from_dict(d["normal"], f"{name}.normal", f"{where}: normal")
    reduce = _cell_from_dict(d["reduce"], f"{name}.reduce", f"{where}: reduce")
    return Genotype(name, normal, reduce, conventions=d.get("conventions", "tf_slim"), source=d.get("source", ""))


def read_genotype(path: str | os.PathLike) -> Genotype:
    """Read a genotype JSON file (as the search writes them); errors name the file."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise FileNotFoundError(f"genotype file {os.fspath(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GenotypeError(f"genotype file {os.fspath(path)!r} is not valid JSON: {e}") from e
    return genotype_from_dict(data, where=f"genotype file {os.fspath(path)!r}")


def resolve_genotype(genotype: str | os.PathLike | Genotype | Mapping[str, Any]) -> Genotype:
    """A :class:`Genotype`: the object itself, its JSON object, a registered name, or a JSON file path."""
    if isinstance(genotype, Genotype):
        return genotype
    if isinstance(genotype, Mapping):
        return genotype_from_dict(genotype)
    value = os.fspath(genotype)
    if value in GENOTYPES:
        return GENOTYPES[value]
    if value.endswith(".json") or os.path.isfile(os.path.expanduser(value)):
        return read_genotype(value)
    raise ValueError(
        f"genotype={value!r} is neither a registered genotype{did_you_mean(value, GENOTYPES)} ("
        f"{', '.join(GENOTYPES)}) nor a genotype .json file (as tools/search.py writes)"
    )
