"""The wiring of a cell network as data, and the one executor that runs it.

A NASNet-style network is a list of cells (:class:`Spec`), each reading outputs of earlier producers (:class:`Ref`;
producer 0 is the stem, producer i the i-th cell). :func:`wire_cells` lays that list out as TF-slim
``_build_nasnet_base`` does. :func:`make_plan` turns it, with what a caller wants back (feature levels, the last
activation, the auxiliary head's input, the output of a box-head tail), into a :class:`Plan`: the cells to run, which
value every cell input reads, which values are kept as they are and which after ReLU, and when each can be freed.
:func:`run_plan` executes a plan. The whole network, ``features_only``, the auxiliary head and the Faster R-CNN C4
box head (the last cells run on RoI features) all run through these two functions.

A plan is plain Python data fixed at planning time, so every tracer (``torch.jit.trace``, ``torch.fx``,
``torch.export``) sees the same straight-line sequence of cell calls as eager mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .cell import keep_pair, live_states
from .genotypes import Genotype

Key = tuple[int, int]  # a value: (producer, output index); output k > 0 only for cells emitting several states
INPUT: Key = (0, 0)  # the value every producer before a plan's first cell stands for (the stem output, RoI features)


@dataclass(frozen=True)
class Ref:
    """Input of a cell: output ``k`` of producer ``p`` (0 = stem), or the raw input 0 when ``raw``."""

    p: int
    k: int = 0
    raw: bool = False


@dataclass(frozen=True)
class Spec:
    """One cell of the network: its name (the module name under ``cells``), kind, width F, stage and inputs."""

    name: str
    reduction: bool
    channels: int
    stage: int
    inputs: tuple[Ref, ...]


def wire_cells(
    num_inputs: int,
    first_prev_none: bool,
    counts: tuple[int, ...],
    imagenet: bool,
    f0: int,
    skip_reduction_layer_input: bool,
) -> list[Spec]:
    """The cells of a network in execution order, each with its inputs (TF-slim ``_imagenet_stem`` +
    ``_build_nasnet_base``; ``cell_outputs`` is the history ``hist`` of producers).

    Input j of a cell is the j-th most recent producer, or its output j if that emits several (NASNet-B); with
    ``skip_reduction_layer_input`` the normal cell right after a reduction takes its older inputs from before the
    reduction's input. Before the first cell, missing producers are None when ``first_prev_none`` (TF-slim
    ``prev_layer=None``: the raw current input stands in for them), else the stem.
    """

    def spec(name: str, reduction: bool, channels: int, stage: int, skip: bool) -> Spec:
        refs = []
        for j in range(num_inputs):
            back = 1 + j + (1 if skip and j > 0 else 0)
            p = hist[-back] if back <= len(hist) else hist[0]
            refs.append(Ref(hist[-1], 0, raw=True) if p is None else Ref(p, j))
        return Spec(name, reduction, channels, stage, tuple(refs))

    specs: list[Spec] = []
    hist: list[int | None] = [None if first_prev_none else 0] * (num_inputs - 1) + [0]
    if imagenet:  # two reduction "stem cells" of F0 / 4 and F0 / 2 after conv0
        for i in range(2):
            specs.append(spec(f"cell_stem_{i}", True, int(f0 * 2.0 ** (i - 2)), i + 1, False))
            hist.append(len(specs))
    stage_base = 2 if imagenet else 1
    n_normal = 0
    for s, n in enumerate(counts):
        skip = False
        if s > 0:
            specs.append(spec(f"reduction_cell_{s - 1}", True, f0 * 2**s, stage_base + s, False))
            hist.append(len(specs))
            skip = skip_reduction_layer_input
        for i in range(n):
            specs.append(spec(f"cell_{n_normal}", False, f0 * 2**s, stage_base + s, skip and i == 0))
            hist.append(len(specs))
            n_normal += 1
    return specs


def used_outputs(specs: list[Spec], genotype: Genotype) -> dict[int, tuple[int, ...]]:
    """Per producer, the outputs some later layer reads (output 0 always: next cell, level, head), found from the last
    cell backwards. Only matters for cells emitting several states (NASNet-B), whose last ones feed layers that do not
    exist."""
    n_out = len(genotype.normal.outputs) or 1
    used: dict[int, set[int]] = {i: {0} for i in range(len(specs) + 1)}
    for idx in range(len(specs), 0, -1):
        sp = specs[idx - 1]
        live = live_states(genotype.reduce if sp.reduction else genotype.normal, tuple(sorted(used[idx])))
        for j, r in enumerate(sp.inputs):
            if j in live:
                used[r.p].add(0 if r.raw or r.p == 0 else min(r.k, n_out - 1))
    return {i: tuple(sorted(u)) for i, u in used.items()}


@dataclass(frozen=True)
class Step:
    """One cell call: producer index, module name, the value each input reads (None: unread), whether its output is
    a fresh tensor (so a ReLU only consumers want may overwrite it), and the values no later step or result reads."""

    producer: int
    name: str
    reads: tuple[Key | None, ...]
    fresh: bool
    free: tuple[Key, ...]


@dataclass(frozen=True)
class Plan:
    """What :func:`run_plan` executes. ``results``: (name, value, after ReLU) per requested output."""

    steps: tuple[Step, ...]
    raw: frozenset[Key]
    act: frozenset[Key]
    results: tuple[tuple[str, Key, bool], ...]


def _num_outputs(cell: nn.Module) -> int:
    return len(cell.out_channels) if isinstance(cell.out_channels, list) else 1


def make_plan(
    specs: list[Spec], cells: Mapping[str, nn.Module], wanted: Mapping[str, tuple[int, bool]], first: int = 1
) -> Plan:
    """Plan the run of ``specs[first - 1:]`` up to the deepest producer in ``wanted``.

    Args:
        specs: every cell of the network (:func:`wire_cells`).
        cells: the cell modules by name; those the plan runs must be present.
        wanted: result name -> (producer, after ReLU); output 0 of that producer.
        first: the first producer to run; every producer before it is the one input value :data:`INPUT`.
    """
    stop = max((p for p, _ in wanted.values()), default=0)
    missing = [sp.name for sp in specs[first - 1 : stop] if sp.name not in cells]
    if missing:
        raise ValueError(f"cannot run to producer {stop}: cells {', '.join(missing)} are not in this module")
    n_out = {p: _num_outputs(cells[specs[p - 1].name]) for p in range(first, stop + 1)}

    def key(r: Ref) -> Key:
        return INPUT if r.p < first else (r.p, min(r.k, n_out[r.p] - 1))

    raw: set[Key] = set()
    act: set[Key] = set()
    results = tuple((name, INPUT if p < first else (p, 0), relu) for name, (p, relu) in wanted.items())
    for _, k, relu in results:
        (act if relu else raw).add(k)
    calls = []
    for p in range(first, stop + 1):
        cell = cells[specs[p - 1].name]
        reads: list[Key | None] = []
        for j, r in enumerate(specs[p - 1].inputs):
            if not (cell.input_raw[j] or cell.input_act[j]):
                reads.append(None)
                continue
            reads.append(key(r))
            if cell.input_raw[j]:
                raw.add(key(r))
            if cell.input_act[j]:
                act.add(key(r))
        calls.append((p, cell, tuple(reads)))
    last_read: dict[Key, int] = {}
    for i, (_, _, reads) in enumerate(calls):
        for k in reads:
            if k is not None:
                last_read[k] = i
    kept = {k for _, k, _ in results}
    steps = tuple(
        Step(
            p,
            specs[p - 1].name,
            reads,
            fresh=isinstance(cell.out_channels, int),  # emitted states of a multi-output cell may be its inputs
            free=tuple(k for k, last in last_read.items() if last == i and k not in kept),
        )
        for i, (p, cell, reads) in enumerate(calls)
    )
    return Plan(steps, frozenset(raw), frozenset(act), results)


def run_plan(plan: Plan, cells: Mapping[str, nn.Module], x: Tensor, activated: bool = False) -> dict[str, Tensor]:
    """Execute ``plan`` on ``x``, the value of every producer before its first cell: a fresh tensor (the stem
    output), or with ``activated=True`` one that is already after ReLU and stands for both forms (RoI features
    pooled from a cell level). Returns the requested results by name, in the order they were asked for."""
    values = {INPUT: (x, x) if activated else keep_pair(x, INPUT in plan.raw, INPUT in plan.act, fresh=True)}
    for step in plan.steps:
        pairs = [(None, None) if k is None else values[k] for k in step.reads]
        y = cells[step.name]([a for a, _ in pairs], [b for _, b in pairs])
        for k, t in enumerate(y if isinstance(y, list) else [y]):
            v = (step.producer, k)
            if t is not None and (v in plan.raw or v in plan.act):
                values[v] = keep_pair(t, v in plan.raw, v in plan.act, step.fresh)
        for v in step.free:
            del values[v]
    return {name: values[v][1 if relu else 0] for name, v, relu in plan.results}
