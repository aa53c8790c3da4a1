"""Export a backbone to ONNX, a ``torch.export`` ExportedProgram or a traced TorchScript file, verified after writing.

:func:`export_model` writes the file under a temporary name, loads it back, runs it on seeded random inputs (the
example batch, and a second batch size when the batch dimension is dynamic) and compares every output with eager
PyTorch on the same inputs; only a file that agrees is renamed to the final name. A disagreement raises
:class:`ExportMismatchError` naming the output, the largest error and the bound, and leaves no file behind.

Errors are measured relative to the output's scale, ``max|exported - eager| / max|eager|`` per output: the feature
maps of a randomly initialised NASNet reach 1e4, where float32 rounding alone gives absolute differences of 1e-2.
The default bound, 1e-4, is about 1000 float32 epsilons (1.2e-7): another runtime (onnxruntime's or the
ExportedProgram's kernels) sums convolutions in another order, which costs a few epsilons per layer and measured
1e-7..2e-6 over the registry, while a real export bug (a wrong padding, a dropped norm, a baked batch size) moves the
outputs by 1e-2 or more.

Formats (:data:`FORMATS`): ``"onnx"`` (``torch.onnx.export``; ``dynamo=True``, the default exporter, needs the
``onnxscript`` package; ``dynamo=False`` is the TorchScript-based one; verified with onnxruntime), ``"torchscript"``
(``torch.jit.trace`` with its graph check, loaded back with ``torch.jit.load``), ``"exported-program"``
(``torch.export.export`` then ``torch.export.save``, loaded back with ``torch.export.load``). ``onnx``, ``onnxscript``
and ``onnxruntime`` are imported only when used (``pip install cnn-backbones[export]``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import staged_file
from .checks import check, check_choice

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "exported-program")
#: the file suffix each format is written with by default
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
#: default bound on max|exported - eager| / max|eager| (see the module docstring)
RTOL = 1e-4
INPUT_NAME = "images"


class ExportMismatchError(RuntimeError):
    """An exported artefact disagrees with eager PyTorch. ``output`` names the output, ``error`` is the largest
    relative error found and ``bound`` the one allowed."""

    def __init__(self, message: str, output: str, error: float, bound: float) -> None:
        super().__init__(message)
        self.output = output
        self.error = error
        self.bound = bound


@dataclass
class ExportReport:
    """What an export wrote and how closely the written file matches eager PyTorch."""

    path: Path
    format: str
    outputs: list[str]
    errors: dict[str, float]  # output name -> largest error over every verified input (relative, for backbones)
    bounds: dict[str, float]  # output name -> the error allowed
    inputs: list[tuple[int, ...]]  # shapes of the verified inputs
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        errs = ", ".join(f"{k} {v:.2e} (<= {self.bounds[k]:.0e})" for k, v in self.errors.items())
        shapes = ", ".join("x".join(map(str, s)) for s in self.inputs)
        return f"{self.path} ({self.format}): errors {errs}; verified on {shapes}; {self.seconds:.1f} s"


def output_names(model: nn.Module) -> list[str]:
    """``["logits"]`` for a classifier, the level names (``c2``..``c5``) for a ``features_only`` backbone."""
    if getattr(model, "features_only", False):
        return list(model.out_features)
    return ["logits"]


def flatten_outputs(y: Any) -> list[Tensor]:
    """The outputs of a model call as a list: a tensor, the values of a dict in order, or a tuple / list."""
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, dict):
        return list(y.values())
    if isinstance(y, tuple | list):
        return [t for v in y for t in flatten_outputs(v)]
    raise TypeError(f"cannot compare an output of type {type(y).__name__}; expected tensors, dicts or tuples of them")


def relative_error(ref: Tensor, got: Tensor) -> float:
    """``max|got - ref| / max|ref|`` over the finite entries of ``ref`` (the absolute error when ``ref`` is all zeros);
    inf when ``got`` has another number of elements or is non-finite where ``ref`` is finite, or the reverse."""
    if got.numel() != ref.numel():
        return float("inf")
    ref, got = ref.detach().double(), got.detach().double().reshape(ref.shape)
    finite = torch.isfinite(ref)
    if not bool((torch.isfinite(got) == finite).all()):
        return float("inf")
    if not bool(finite.any()):
        return 0.0
    diff = (got - ref)[finite].abs().max().item()
    scale = ref[finite].abs().max().item()
    return diff / scale if scale > 0 else diff


def compare_outputs(
    ref: Sequence[Tensor], got: Sequence[Tensor], names: Sequence[str], bound: float, what: str
) -> dict[str, float]:
    """Per output name, the relative error of ``got`` against ``ref``; raises :class:`ExportMismatchError` naming the
    worst output when one exceeds ``bound`` or the outputs differ in number or shape."""
    if len(got) != len(ref):
        raise ExportMismatchError(
            f"{what}: {len(got)} outputs, eager PyTorch gives {len(ref)} ({', '.join(names)})", "*", float("inf"), bound
        )
    errors = {}
    for name, r, g in zip(names, ref, got):
        if tuple(g.shape) != tuple(r.shape):
            raise ExportMismatchError(
                f"{what}: output {name!r} has shape {tuple(g.shape)}, eager PyTorch gives {tuple(r.shape)}",
                name,
                float("inf"),
                bound,
            )
        errors[name] = relative_error(r, g)
    worst = max(errors, key=errors.get)
    if not errors[worst] <= bound:
        raise ExportMismatchError(
            f"{what}: output {worst!r} disagrees with eager PyTorch: max|exported - eager| / max|eager| = "
            f"{errors[worst]:.3e} > bound {bound:.0e}",
            worst,
            errors[worst],
            bound,
        )
    return errors


def example_inputs(
    batch_sizes: Sequence[int], input_size: int | Sequence[int], in_chans: int = 3, seed: int = 0
) -> list[Tensor]:
    """Seeded standard-normal image batches, one per batch size (what :func:`export_model` verifies on)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, in_chans, h, w, generator=g) for n in batch_sizes]


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Silence torch 2.14's deprecation notices of ``torch.jit.trace``/``load`` (TorchScript is still what detectron2's
    tracing path and C++ deployments load) and ``torch.export.load``'s note on weights saved from the CPU."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        yield


# ---- writers ---------------------------------------------------------------------------------------------------------
def _write_onnx(
    model: nn.Module, x: Tensor, path: Path, names: list[str], dynamic_batch: bool, dynamo: bool, opset: int | None
) -> None:
    if dynamo:
        try:
            import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
        except ImportError as e:
            raise ImportError(
                "ONNX export with dynamo=True (torch's default exporter) needs onnxscript: "
                "pip install 'cnn-backbones[export]' (or pass dynamo=False for the TorchScript-based exporter)"
            ) from e
        dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            opset_version=opset,
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
        return
    axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=names,
            opset_version=opset,
            dynamic_axes=axes,
        )


def _write_torchscript(model: nn.Module, x: Tensor, path: Path) -> None:
    # traced in the default (grad-enabled) mode with the graph check on: the check traces again without grad, so a
    # model whose graph depends on the grad mode (an inference-only fast path) fails here instead of silently
    # exporting one of its two graphs
    try:
        with _quiet_deprecation():
            traced = torch.jit.trace(model, (x,), strict=False, check_trace=True)
    except torch.jit.TracingCheckError as e:
        first = str(e).strip().splitlines()[:2]
        raise RuntimeError(
            f"torch.jit.trace of {type(model).__name__}: the graph traced with gradients enabled differs from the one "
            f"traced without ({' '.join(first)}); the forward takes another path without gradients (an inference "
            f"fast path) or by the input values, so no single traced graph is what eager PyTorch runs"
        ) from e
    traced.save(str(path))


def _write_exported_program(model: nn.Module, x: Tensor, path: Path, dynamic_batch: bool) -> None:
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    with _quiet_deprecation():
        torch.export.save(program, str(path))


# ---- readers ---------------------------------------------------------------------------------------------------------
def load_runner(path: str | os.PathLike, format: str) -> Callable[[Tensor], list[Tensor]]:
    """A function running the exported file at ``path`` on an input batch and returning its outputs as a list:
    onnxruntime's CPU provider for ONNX, ``torch.jit.load`` for TorchScript, ``torch.export.load(...).module()`` for
    an ExportedProgram."""
    check_choice("format", format, FORMATS)
    path = os.fspath(path)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name

        def run_onnx(x: Tensor) -> list[Tensor]:
            return [torch.from_numpy(a) for a in session.run(None, {feed: x.detach().cpu().numpy()})]

        return run_onnx
    with _quiet_deprecation():
        if format == "torchscript":
            module = torch.jit.load(path, map_location="cpu")
        else:
            module = torch.export.load(path).module()

    def run_torch(x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return flatten_outputs(module(x))

    return run_torch


def verify_export(
    path: str | os.PathLike,
    format: str,
    model: nn.Module,
    inputs: Sequence[Tensor],
    bound: float = RTOL,
    names: Sequence[str] | None = None,
    label: str | None = None,
) -> dict[str, float]:
    """Run the exported file and ``model`` (eager, eval mode) on each input; per output the largest relative error.
    ``label`` names the file in messages (default: its format and path).

    Raises:
        ExportMismatchError: an output exceeds ``bound`` (named, with its error and the batch size).
    """
    names = list(names or output_names(model))
    run = load_runner(path, format)
    errors: dict[str, float] = dict.fromkeys(names, 0.0)
    model.eval()
    for x in inputs:
        with torch.no_grad():
            ref = flatten_outputs(model(x))
        what = f"{label or f'{format} file {os.fspath(path)!r}'} at batch size {x.shape[0]}"
        for k, v in compare_outputs(ref, run(x), names, bound, what).items():
            errors[k] = max(errors[k], v)
    return errors


def fixed_devices(path: str | os.PathLike) -> int:
    """How many device constants a TorchScript file's graph holds: a traced ``device=`` argument pins the file to the
    device it was traced on (0 for a device-free graph)."""
    with _quiet_deprecation():
        module = torch.jit.load(os.fspath(path), map_location="cpu")
    graph = "\n".join(str(m.inlined_graph) for m in [module] if hasattr(m, "inlined_graph"))
    return len(re.findall(r"Device = prim::Constant\[value=\"", graph))


def trace_notes(path: str | os.PathLike, name: str | os.PathLike | None = None) -> list[str]:
    """What a user of a traced file must know that verification on the CPU cannot show (logged as warnings)."""
    notes = []
    if n := fixed_devices(path):
        notes.append(f"the traced graph fixes a device at {n} place(s): the file runs on the device it was traced on")
    for note in notes:
        logger.warning("%s: %s", os.fspath(name or path), note)
    return notes


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    format: str = "onnx",
    *,
    input_size: int | Sequence[int] | None = None,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    dynamo: bool = True,
    opset: int | None = None,
    bound: float = RTOL,
) -> ExportReport:
    """Export ``model`` (put in eval mode) to ``path`` and verify the written file against eager PyTorch.

    Args:
        model: a registered backbone (classifier or ``features_only``) or any module taking one image batch.
        path: the file to write; its folder is created. Written only once verified.
        format: one of :data:`FORMATS`.
        input_size: side (or ``(height, width)``) of the example input; default the model card's input size.
        batch_size: batch of the example input (2: a batch of 1 would let exporters specialise the batch).
        dynamic_batch: a dynamic batch dimension (verified at ``batch_size`` and ``batch_size + 1``); False fixes it.
        dynamo: ONNX only: torch's default ``torch.export``-based exporter (needs ``onnxscript``), or the
            TorchScript-based one (False).
        opset: ONNX opset (default: the exporter's).
        bound: largest allowed ``max|exported - eager| / max|eager|`` per output.

    Raises:
        ExportMismatchError: the written file disagrees with eager PyTorch; nothing is left at ``path``.
    """
    check_choice("format", format, FORMATS)
    check("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "give a positive integer")
    check("bound", bound, isinstance(bound, int | float) and bound > 0, "give a positive relative error")
    if input_size is None:
        card = getattr(model, "card", None)
        input_size = card.input_size if card is not None else 224
    sides = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    check("input_size", input_size, len(sides) in (1, 2) and all(int(s) >= 1 for s in sides), "give a side or (h, w)")
    if format == "onnx" and not dynamo and is_quantized(model):
        raise ValueError(
            "dynamo=False is not valid for an int8 model: the TorchScript-based ONNX exporter has no translation of "
            "its quantized_decomposed ops; use dynamo=True (QuantizeLinear / DequantizeLinear in the file)"
        )
    in_chans = _in_chans(model)
    batches = [batch_size, batch_size + 1] if dynamic_batch else [batch_size]
    inputs = example_inputs(batches, input_size, in_chans)
    names = output_names(model)
    model.eval()
    start = time.perf_counter()
    final = Path(path)
    with staged_file(final) as tmp:
        if format == "onnx":
            _write_onnx(model, inputs[0], tmp, names, dynamic_batch, dynamo, opset)
        elif format == "torchscript":
            _write_torchscript(model, inputs[0], tmp)
        else:
            _write_exported_program(model, inputs[0], tmp, dynamic_batch)
        label = f"{format} export to {os.fspath(final)!r}"
        try:
            errors = verify_export(tmp, format, model, inputs, bound, names, label)
        except ExportMismatchError as e:
            raise ExportMismatchError(f"{e}; nothing was written", e.output, e.error, bound) from e
        notes = trace_notes(tmp, final) if format == "torchscript" else []
    shapes = [tuple(x.shape) for x in inputs]
    report = ExportReport(
        final, format, names, errors, dict.fromkeys(names, bound), shapes, time.perf_counter() - start, notes
    )
    logger.info("%s", report.summary())
    return report


def is_quantized(model: nn.Module) -> bool:
    """True for a pt2e-quantised graph (:func:`backbones.quantize.quantize_int8`): it calls ``quantized_decomposed``
    ops."""
    graph = getattr(model, "graph", None)
    nodes = graph.nodes if isinstance(graph, torch.fx.Graph) else ()
    return any(str(getattr(n.target, "namespace", "")) == "quantized_decomposed" for n in nodes)


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def default_path(name: str, format: str, features_only: bool = False, folder: str | os.PathLike = ".") -> Path:
    """``<folder>/<name>[_features]<suffix of the format>``."""
    check_choice("format", format, FORMATS)
    return Path(folder) / f"{name}{'_features' if features_only else ''}{SUFFIXES[format]}"
