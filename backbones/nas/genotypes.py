"""Searched cells as data, and the validator every genotype passes at definition time.

The NASNet search space (Zoph et al. 2018, arXiv 1707.07012, section 3 and appendix A.4): a cell is B blocks; each
block picks two hidden states, one operation for each and a combine op, and appends the result to the list of hidden
states. The cell's output is the concatenation of some states (NASNet-A, -C, PNASNet, ENAS micro) or, for NASNet-B
(appendix B), several states emitted separately to the next cells.

Indexing follows TF-slim ``nets/nasnet/nasnet_utils.py`` (the reference implementation every released checkpoint was
made with): state 0 is the cell's most recent input h_i, state 1 the one before it h_{i-1} (2..k-1 the older ones of
a k-input cell), and states ``num_inputs, num_inputs + 1, ...`` are the block outputs in order. DARTS-style files index
the two inputs the other way round (DARTS 0 = C_{k-2} = our 1); ENAS arcs are converted by :func:`cell_from_enas_arc`.

Where the paper and the released code disagree we follow the code (``shared/reference/arch_reference.md`` 8.1):
NASNet-A concatenates 6 states in the normal cell (h_{i-1} included although a block uses it) and 4 in the reduction
cell, not the 5 and 3 of the paper's Fig. 4; only 6F/4F gives the "N @ penultimate" widths and the checkpoints.

NASNet-B and NASNet-C exist only as figures (paper Figs. 8 and 9); no text or code listing of their cells is known,
so none is given here. The search-space features they need (4-input / 4-output cells, ``concat``, ``add_layernorm``
and ``add_instancenorm`` combines) are supported, so a genotype transcribed from the figures is pure data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checks import did_you_mean

# The 13 operations of the paper's list (section 3), in its order; TF-slim names in comments where they exist.
OPS = (
    "identity",  # TF-slim "none"
    "conv_1x7_7x1",
    "avg_pool_3x3",  # "avg_pool_3x3"
    "max_pool_5x5",
    "conv_1x1",
    "sep_conv_3x3",  # "separable_3x3_2": applied twice (A.4)
    "sep_conv_7x7",  # "separable_7x7_2"
    "conv_1x3_3x1",
    "dil_conv_3x3",
    "max_pool_3x3",  # "max_pool_3x3"
    "max_pool_7x7",
    "conv_3x3",
    "sep_conv_5x5",  # "separable_5x5_2"
)
# Step 5 of a block (section 3; appendix B adds the two normalised sums for NASNet-B/C).
COMBINES = ("add", "concat", "add_layernorm", "add_instancenorm")

_TF_SLIM_OPS = {
    "none": "identity",
    "separable_3x3_2": "sep_conv_3x3",
    "separable_5x5_2": "sep_conv_5x5",
    "separable_7x7_2": "sep_conv_7x7",
    "avg_pool_3x3": "avg_pool_3x3",
    "max_pool_3x3": "max_pool_3x3",
}
_ENAS_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")  # micro_child.py op ids


class GenotypeError(ValueError):
    """A malformed genotype: names the cell, the block (and the state it creates) and the valid choices."""


@dataclass(frozen=True)
class Block:
    """One block (paper Fig. 3): ``combine(left_op(state[left]), right_op(state[right]))``."""

    left: int
    left_op: str
    right: int
    right_op: str
    combine: str = "add"


@dataclass(frozen=True)
class CellGenotype:
    """A cell as data.

    Attributes:
        name: e.g. ``"nasnet_a.normal"``, used in error messages.
        blocks: the B blocks, in order; block b creates state ``num_inputs + b``.
        num_inputs: hidden states the cell takes (2 for NASNet-A; 4 for NASNet-B).
        concat: states concatenated into the single output (channel order as listed).
        outputs: for cells without concatenation (NASNet-B): the states emitted; ``outputs[k]`` becomes input ``k`` of
            the k-th next cell (paper Fig. 8: "labeled with 0, 1, 2, 3 to represent the next four layers").
            Exactly one of ``concat`` and ``outputs`` is given.
    """

    name: str
    blocks: tuple[Block, ...]
    concat: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    num_inputs: int = 2

    def __post_init__(self) -> None:
        validate_cell(self)

    @property
    def num_states(self) -> int:
        return self.num_inputs + len(self.blocks)

    @property
    def multi_output(self) -> bool:
        return bool(self.outputs)


@dataclass(frozen=True)
class Conventions:
    """Where two reference codes build the same search space differently; a genotype names the one it came from.

    Attributes:
        h0: input 0 handling: ``"project"`` = always ReLU -> 1x1 -> BN (TF-slim ``_cell_base``); ``"calibrate_project"``
            = ReLU -> 1x1 -> BN when its channels differ, then always ReLU -> 1x1 -> BN (ENAS ``_maybe_calibrate_size``
            followed by ``layer_base``).
        first_prev: older inputs of the first cell: ``"none"`` = the raw stem output, unprojected (TF-slim
            ``cell_outputs = [None, stem]``); ``"stem"`` = the stem output, calibrated like any input (ENAS
            ``layers = [stem, stem]``).
        stride_identity: identity with stride 2: ``"conv"`` = ReLU -> 1x1/2 -> BN (TF-slim); ``"factorized"`` =
            factorized reduction without ReLU (ENAS).
        pool_projection_relu: a pooling op on C_in != F channels is followed by [ReLU ->] 1x1 -> BN (ENAS has the ReLU).
        aux_after: ``"stage2_end"`` (NASNet A.7: after the last cell of the second stage, "2/3 of the way up") or
            ``"stage3_start"`` (ENAS: after the first normal cell of the third stage).
        aux_same_padding: the aux head's big conv is SAME-padded and followed by global pooling (ENAS) instead of
            VALID over the whole map (TF-slim).
        fc_bias: classifier (and aux classifier) with bias (TF-slim) or without (ENAS).
    """

    h0: str = "project"
    first_prev: str = "none"
    stride_identity: str = "conv"
    pool_projection_relu: bool = False
    aux_after: str = "stage2_end"
    aux_same_padding: bool = False
    fc_bias: bool = True


CONVENTIONS = {
    "tf_slim": Conventions(),  # tensorflow/models research/slim/nets/nasnet (NASNet-A, PNASNet)
    "enas": Conventions(  # melodyguan/enas src/cifar10/micro_child.py
        h0="calibrate_project",
        first_prev="stem",
        stride_identity="factorized",
        pool_projection_relu=True,
        aux_after="stage3_start",
        aux_same_padding=True,
        fc_bias=False,
    ),
}


@dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell, the conventions of the code they come from, and the source."""

    name: str
    normal: CellGenotype
    reduce: CellGenotype
    conventions: str = "tf_slim"
    source: str = ""
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.conventions not in CONVENTIONS:
            raise GenotypeError(
                f"genotype {self.name!r}: conventions={self.conventions!r} is not one of {', '.join(CONVENTIONS)}"
            )
        if self.normal.num_inputs != self.reduce.num_inputs:
            raise GenotypeError(
                f"genotype {self.name!r}: normal cell takes {self.normal.num_inputs} inputs but reduction cell "
                f"{self.reduce.num_inputs}; the network feeds both from the same previous cells"
            )
        if self.normal.multi_output != self.reduce.multi_output:
            raise GenotypeError(f"genotype {self.name!r}: both cells must concatenate, or both emit separate outputs")


def validate_cell(cell: CellGenotype) -> None:
    """Raise :class:`GenotypeError` naming the node and the valid set for any malformed part of ``cell``."""
    where = f"cell {cell.name!r}"
    if cell.num_inputs < 1:
        raise GenotypeError(f"{where}: num_inputs={cell.num_inputs} must be at least 1")
    if not cell.blocks:
        raise GenotypeError(f"{where}: has no blocks")
    for b, block in enumerate(cell.blocks):
        state = cell.num_inputs + b
        node = f"{where} block {b} (creates state {state})"
        for side, idx, op in (("left", block.left, block.left_op), ("right", block.right, block.right_op)):
            if op not in OPS:
                hint = did_you_mean(op, OPS, cutoff=0.5)
                raise GenotypeError(f"{node}: {side} op {op!r} is unknown{hint}; valid: {', '.join(OPS)}")
            if not isinstance(idx, int) or not 0 <= idx < state:
                raise GenotypeError(
                    f"{node}: {side} input {idx!r} is out of range; valid states here: 0..{state - 1} "
                    f"(inputs 0..{cell.num_inputs - 1}, then earlier blocks)"
                )
        if block.combine not in COMBINES:
            raise GenotypeError(
                f"{node}: combine {block.combine!r} is unknown{did_you_mean(block.combine, COMBINES, cutoff=0.5)}; "
                f"valid: {', '.join(COMBINES)}"
            )
    if bool(cell.concat) == bool(cell.outputs):
        raise GenotypeError(f"{where}: give exactly one of concat (one concatenated output) or outputs (several)")
    kind = "concat" if cell.concat else "outputs"
    states = cell.concat or cell.outputs
    for s in states:
        if not isinstance(s, int) or not 0 <= s < cell.num_states:
            raise GenotypeError(
                f"{where}: {kind} names state {s!r}, which does not exist; valid states: 0..{cell.num_states - 1}"
            )
    if len(set(states)) != len(states):
        raise GenotypeError(f"{where}: {kind} lists a state twice: {list(states)}")
    if cell.outputs and len(cell.outputs) != cell.num_inputs:
        raise GenotypeError(
            f"{where}: emits {len(cell.outputs)} outputs but takes {cell.num_inputs} inputs; a cell without "
            f"concatenation must emit as many states as it takes (paper appendix B)"
        )


def cell_from_tf_slim(
    name: str, operations: list[str], hiddenstate_indices: list[int], concat: list[int]
) -> CellGenotype:
    """A two-input cell from TF-slim's flat lists (``operations``/``hiddenstate_indices`` pairs per block)."""
    if len(operations) != len(hiddenstate_indices) or len(operations) % 2:
        raise GenotypeError(f"cell {name!r}: operations and hiddenstate_indices must have the same even length")
    unknown = [op for op in operations if op not in _TF_SLIM_OPS]
    if unknown:
        raise GenotypeError(f"cell {name!r}: TF-slim op {unknown[0]!r} is unknown; valid: {', '.join(_TF_SLIM_OPS)}")
    ops = [_TF_SLIM_OPS[op] for op in operations]
    idx = hiddenstate_indices
    blocks = tuple(Block(idx[i], ops[i], idx[i + 1], ops[i + 1]) for i in range(0, len(ops), 2))
    return CellGenotype(name, blocks, concat=tuple(concat))


def cell_from_enas_arc(name: str, arc: str) -> CellGenotype:
    """A cell from an ENAS micro arc: 4 ints per node (x_idx, x_op, y_idx, y_op); output = every unused state.

    ENAS index 0 is the older input h_{i-1} and 1 the newer h_i (``micro_child.py`` ``layers = [prev, cur]``), the
    reverse of ours, so 0 and 1 are swapped; op ids: 0 sep 3x3, 1 sep 5x5, 2 avg 3x3, 3 max 3x3, 4 identity.
    """
    vals = [int(v) for v in arc.split()]
    if len(vals) % 4:
        raise GenotypeError(f"cell {name!r}: an ENAS arc has 4 ints per node, got {len(vals)}")
    swap = {0: 1, 1: 0}
    blocks = []
    for i in range(0, len(vals), 4):
        x, xo, y, yo = vals[i : i + 4]
        for op_id in (xo, yo):
            if not 0 <= op_id < len(_ENAS_OPS):
                raise GenotypeError(
                    f"cell {name!r} node {i // 4 + 2}: ENAS op id {op_id} is unknown; valid: 0..{len(_ENAS_OPS) - 1}"
                )
        blocks.append(Block(swap.get(x, x), _ENAS_OPS[xo], swap.get(y, y), _ENAS_OPS[yo]))
    used = {b.left for b in blocks} | {b.right for b in blocks}
    concat = tuple(s for s in range(2 + len(blocks)) if s not in used)
    return CellGenotype(name, tuple(blocks), concat=concat)


# ---- NASNet-A: tensorflow/models research/slim/nets/nasnet/nasnet.py NasNetANormalCell / NasNetAReductionCell --------
NASNET_A = Genotype(
    name="nasnet_a",
    normal=cell_from_tf_slim(
        "nasnet_a.normal",
        [
            "separable_5x5_2",
            "separable_3x3_2",
            "separable_5x5_2",
            "separable_3x3_2",
            "avg_pool_3x3",
            "none",
            "avg_pool_3x3",
            "avg_pool_3x3",
            "separable_3x3_2",
            "none",
        ],
        [0, 1, 1, 1, 0, 1, 1, 1, 0, 0],
        concat=[1, 2, 3, 4, 5, 6],  # used_hiddenstates [1,0,0,0,0,0,0]: h_{i-1} concatenated too -> 6F
    ),
    reduce=cell_from_tf_slim(
        "nasnet_a.reduce",
        [
            "separable_5x5_2",
            "separable_7x7_2",
            "max_pool_3x3",
            "separable_7x7_2",
            "avg_pool_3x3",
            "separable_5x5_2",
            "none",
            "avg_pool_3x3",
            "separable_3x3_2",
            "max_pool_3x3",
        ],
        [0, 1, 0, 1, 0, 1, 3, 2, 2, 0],
        concat=[3, 4, 5, 6],  # used_hiddenstates [1,1,1,0,0,0,0] -> 4F
    ),
    source="TF-slim nasnet.py (released checkpoints); paper Fig. 4 shows the same blocks with 5F/3F concatenation",
)

# ---- PNASNet-5: TF-slim nets/nasnet/pnasnet.py PNasNetNormalCell (one cell type, stride 2 for reduction) -------------
_PNAS_CELL = CellGenotype(
    "pnasnet5.cell",
    (
        Block(1, "sep_conv_5x5", 1, "max_pool_3x3"),
        Block(0, "sep_conv_7x7", 0, "max_pool_3x3"),
        Block(0, "sep_conv_5x5", 0, "sep_conv_3x3"),
        Block(4, "sep_conv_3x3", 0, "max_pool_3x3"),
        Block(1, "sep_conv_3x3", 0, "identity"),
    ),
    concat=(2, 3, 4, 5, 6),  # used_hiddenstates [1,1,0,0,0,0,0] -> 5F
)
PNASNET5 = Genotype(
    name="pnasnet5",
    normal=_PNAS_CELL,
    reduce=_PNAS_CELL,
    source="TF-slim pnasnet.py: ops [sep5, max3, sep7, max3, sep5, sep3, sep3, max3, sep3, none], "
    "indices [1,1, 0,0, 0,0, 4,0, 1,0]",
)

# ---- ENAS micro: melodyguan/enas scripts/cifar10_micro_final.sh, the authors' released fixed_arc --------------------
ENAS_MICRO = Genotype(
    name="enas_micro",
    normal=cell_from_enas_arc("enas_micro.normal", "0 2 0 0  0 4 0 1  0 4 1 1  1 0 0 1  0 2 1 1"),
    reduce=cell_from_enas_arc("enas_micro.reduce", "1 0 1 0  0 3 0 2  1 1 3 1  1 0 0 4  0 3 1 1"),
    conventions="enas",
    source="melodyguan/enas scripts/cifar10_micro_final.sh fixed_arc (a third-party transcription of the paper's "
    "figure has different cells; which one gave the paper's 4.6M / 3.54% is not established)",
)

GENOTYPES: dict[str, Genotype] = {g.name: g for g in (NASNET_A, PNASNET5, ENAS_MICRO)}

# ---- ENAS macro: melodyguan/enas scripts/cifar10_macro_final.sh fixed_arc, one line per layer ----------------------
# Layer k: the op id (0 conv 3x3, 1 sep conv 3x3, 2 conv 5x5, 3 sep conv 5x5; 4/5 pooling are never built by the
# fixed-arc code) followed by k skip bits; bit i selects prev_layers[i] with prev_layers = [stem, L0, L1, ...].
ENAS_MACRO_ARC = """
0
3 0
0 1 0
2 0 0 1
2 0 0 0 0
3 1 1 0 1 0
2 0 0 0 0 0 1
2 0 1 1 0 1 1 1
1 0 1 1 1 0 1 0 1
0 0 0 0 0 0 0 0 0 0
2 0 0 0 0 0 1 0 0 0 0
0 1 0 0 1 1 0 0 0 0 1 1
2 0 1 0 0 0 0 0 1 0 1 1 0
1 0 0 1 0 0 0 1 1 1 0 1 0 1
0 1 1 0 1 0 1 0 0 0 0 0 1 0 0
2 0 0 1 0 0 0 0 0 0 0 1 0 1 0 1
2 0 1 0 0 0 1 0 0 1 1 1 1 0 0 1 0
2 0 0 0 0 1 0 1 0 1 0 0 1 0 1 0 0 1
3 0 1 1 0 1 0 0 0 0 0 1 0 1 0 1 0 0 0
3 0 1 1 0 0 0 0 0 0 0 0 0 1 1 0 0 0 0 1
0 1 0 0 1 0 1 1 0 0 0 1 0 0 0 0 0 1 1 0 0
3 0 1 0 1 1 0 0 1 0 1 1 0 1 1 0 1 0 0 1 0 0
0 1 0 1 0 1 0 0 0 0 0 0 0 0 1 0 1 0 0 1 0 0 0
0 1 1 0 0 0 1 1 1 0 1 0 0 0 1 0 1 0 0 1 1 0 0 0
"""
ENAS_MACRO_OPS = ("conv_3x3", "sep_conv_3x3", "conv_5x5", "sep_conv_5x5")


@dataclass(frozen=True)
class MacroLayer:
    """One layer of an ENAS macro network: its op and the earlier outputs (0 = stem, i = layer i-1) it concatenates."""

    op: str
    skips: tuple[int, ...]


def decode_enas_macro_arc(arc: str = ENAS_MACRO_ARC) -> tuple[MacroLayer, ...]:
    """Layers from an ENAS macro arc (whole-channels format), checking each line's length and op id."""
    layers = []
    for k, line in enumerate(ln for ln in arc.strip().splitlines() if ln.strip()):
        vals = [int(v) for v in line.split()]
        if len(vals) != k + 1:
            raise GenotypeError(f"ENAS macro layer {k}: expected an op id and {k} skip bits, got {len(vals)} ints")
        if not 0 <= vals[0] < len(ENAS_MACRO_OPS):
            raise GenotypeError(
                f"ENAS macro layer {k}: op id {vals[0]} is not built by the fixed-arc code; valid: "
                + ", ".join(f"{i} {n}" for i, n in enumerate(ENAS_MACRO_OPS))
            )
        layers.append(MacroLayer(ENAS_MACRO_OPS[vals[0]], tuple(i for i, b in enumerate(vals[1:]) if b)))
    return tuple(layers)


def get_genotype(genotype: str | Genotype) -> Genotype:
    """A genotype by name (see :data:`GENOTYPES`), or the object itself."""
    if isinstance(genotype, Genotype):
        return genotype
    if genotype not in GENOTYPES:
        valid = tuple(GENOTYPES)
        hint = did_you_mean(genotype, valid, cutoff=0.5)
        raise KeyError(f"unknown genotype {genotype!r}{hint}; valid: {', '.join(valid)}")
    return GENOTYPES[genotype]
