"""int8 post-training static quantisation for x86 CPUs, and reduced-precision inference measured against float32.

The path is PyTorch 2 export quantisation ("pt2e") with the x86 quantiser, from ``torchao``: torch 2.14's
``torch.ao.quantization`` no longer ships ``quantize_pt2e`` or ``X86InductorQuantizer`` (they moved to
``torchao.quantization.pt2e``), and its eager-mode and FX-graph flows are deprecated. :func:`quantize_int8`:

1. ``torch.export`` of the eval-mode model with a dynamic batch;
2. ``prepare_pt2e`` with ``X86InductorQuantizer``'s default configuration: weights int8 symmetric per output channel,
   activations uint8 affine per tensor (histogram observers), BatchNorm folded into the convolutions;
3. the calibration batches run through the observed model (a few batches of training images suffice);
4. ``convert_pt2e``: a ``GraphModule`` holding int8 weights and quantize / dequantize nodes (the reference form). It
   is what :func:`save_int8` writes (``torch.export``, a ``.pt2`` file about a quarter of the float32 one) and what
   the dynamo ONNX exporter turns into a QDQ model (``backbones.export.export_model(q, path, "onnx")``; the
   TorchScript-based exporter has no ONNX translation of ``quantized_decomposed`` ops). It runs the reference
   kernels: correct, slow.
5. :func:`lower_int8` turns it into oneDNN's fused int8 kernels (``onednn.qconv_pointwise``, ``qlinear_pointwise``)
   for one batch size: the fast form on a CPU, no compiler needed (``torch.compile`` of the reference form with
   inductor's freezing gives the same kernels with a dynamic batch, at minutes of compile time).

``torchao`` is imported only here, when used (``pip install 'cnn-backbones[export]'``).
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check, check_choice

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
#: bound on max|exported - int8 torch| / max|int8 torch| when an int8 model is exported: another runtime's int8
#: kernels (onnxruntime fuses QuantizeLinear / DequantizeLinear pairs into integer convolutions) round some
#: activations one step (1/255 of their range) the other way, and the steps add up over the layers: 0.1-3 % of the
#: logit scale measured on digits-trained models, against 30-40 % between the int8 and the float32 model; a wrong
#: graph (a lost scale or zero point, float weights) moves the outputs by the latter.
INT8_RTOL = 0.05


def _pt2e():
    try:
        import torchao.quantization.pt2e as pt2e
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ImportError(
            "int8 quantisation needs torchao (PyTorch's pt2e quantisation for x86 lives there since torch 2.10): "
            "pip install 'cnn-backbones[export]'"
        ) from e
    return pt2e, x86, prepare_pt2e, convert_pt2e


def _images(batch: Any) -> Tensor:
    """The image tensor of a calibration batch: a tensor, or the first element of a (images, labels, ...) tuple."""
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise TypeError(f"a calibration batch must be an (N, C, H, W) tensor or start with one; got {type(x).__name__}")
    return x


def quantize_int8(model: nn.Module, calibration: Iterable[Any], max_batches: int | None = None) -> nn.Module:
    """int8 post-training static quantisation of ``model`` (eval mode) calibrated on ``calibration``.

    Args:
        model: a classifier or feature extractor taking one ``(N, C, H, W)`` batch.
        calibration: batches of images (tensors, or tuples whose first element is the images), e.g. a training
            loader; their size fixes nothing (the batch is dynamic).
        max_batches: use at most this many calibration batches.

    Returns:
        The reference quantised ``GraphModule`` (int8 weights, quantize / dequantize nodes); ``.eval()`` works on it.
    """
    pt2e, x86, prepare_pt2e, convert_pt2e = _pt2e()
    check("max_batches", max_batches, max_batches is None or max_batches >= 1, "give None or a positive count")
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("calibration is empty; give at least one batch of images")
    example = _images(first)
    model = model.eval()
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    observed = prepare_pt2e(graph, quantizer)
    seen = 0
    with torch.no_grad():
        for b in itertools.chain([first], batches):
            observed(_images(b))
            seen += 1
            if max_batches is not None and seen >= max_batches:
                break
    quantized = convert_pt2e(observed)
    _drop_unused_tensors(quantized)
    pt2e.allow_exported_model_train_eval(quantized)
    quantized.eval()  # the patched eval (returns None) switches the graph's ops; the flags say so too:
    for m in quantized.modules():
        m.training = False
    logger.info("int8: calibrated on %d batch(es) of %s", seen, tuple(example.shape[1:]))
    return quantized


def _drop_unused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """Delete the float32 parameters and buffers the converted graph no longer reads (it keeps them as attributes)."""
    used = {n.target for n in graph_module.graph.nodes if n.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)


class LoweringMismatchError(RuntimeError):
    """oneDNN's lowered int8 kernels (:func:`lower_int8`) disagree with the reference int8 graph they came from."""


def lower_int8(quantized: nn.Module, example: Tensor, bound: float | None = INT8_RTOL) -> nn.Module:
    """The reference quantised module on oneDNN's fused int8 kernels, for inputs of ``example``'s shape.

    The lowered module is run on ``example`` beside the reference graph, and refused with
    :class:`LoweringMismatchError` (naming the error) when max|lowered - reference| / max|reference| > ``bound``
    (``None``: not checked). Measured with torch 2.14: the fused convolution + residual add
    (``onednn.qconv2d_pointwise.binary``) is wrong when its maps are 1 x 1 pixels (ShuffleNet v1's stage 4 at 32 px
    input: 0.5-0.9 of the output scale away; the same unit at 2 x 2 agrees to 1e-7), where the reference graph is
    right. Agreeing lowerings differ by int8 rounding, under 2 % of the output scale on digits-trained models.
    """
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    with torch.no_grad():
        lowered = lower_pt2e_quantized_to_x86(quantized, (example,))
        if bound is None:
            return lowered
        reference, fast = quantized(example), lowered(example)
    err = float((fast.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-12))
    if not err <= bound:
        raise LoweringMismatchError(
            f"oneDNN's lowered int8 kernels disagree with the reference int8 graph on a {tuple(example.shape)} input: "
            f"max|lowered - reference| / max|reference| = {err:.3g} > bound {bound:g} (a known case: a convolution "
            f"added to a residual at 1 x 1 pixels); run the reference graph (correct, slower), or lower for a larger "
            f"input"
        )
    return lowered


def save_int8(quantized: nn.Module, path: str | os.PathLike, example: Tensor) -> Path:
    """Write the reference quantised module as an ExportedProgram to ``path``, atomically; the batch is dynamic
    (``example`` gives the image shape, its batch size does not matter)."""
    from .atomic import staged_file
    from .export import _quiet_deprecation

    example = torch.zeros(2, *example.shape[1:], dtype=example.dtype)  # batch 1 would be specialised
    program = torch.export.export(quantized, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    with staged_file(path) as tmp, _quiet_deprecation():
        torch.export.save(program, str(tmp))
    return Path(path)


def load_int8(path: str | os.PathLike) -> nn.Module:
    """The reference quantised module of a :func:`save_int8` file (lower it with :func:`lower_int8` for speed)."""
    from .export import _quiet_deprecation

    pt2e, *_ = _pt2e()  # registers the quantized_decomposed ops the program calls
    with _quiet_deprecation():
        module = torch.export.load(os.fspath(path)).module()
    pt2e.allow_exported_model_train_eval(module)
    module.eval()
    return module


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer (int8 weights count one byte per value)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, Tensor))


# ---- accuracy and speed against float32 --------------------------------------------------------------------------
def bf16(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``model`` under CPU bf16 autocast (what ``trainer.precision=bf16-mixed`` runs)."""

    def run(x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()

    return run


def top1_agreement(
    reference: Callable[[Tensor], Tensor], candidates: Mapping[str, Callable[[Tensor], Tensor]], batches: Iterable[Any]
) -> dict[str, dict[str, float]]:
    """Top-1 of ``reference`` and of each candidate on labelled ``batches`` ``(images, labels, ...)``, and the
    percentage of images on which each candidate's top-1 class is the reference's. The top-1 class is
    ``top_classes(logits)[:, 0]``, the rule of the training runs' ``val/top1``: where several logits tie for the
    largest (a ReLU classifier such as SqueezeNet's outputs all zeros for some images), ``argmax`` picks another of
    them, and a figure here would differ from the run's.

    Returns:
        ``{"reference": {"top1": ..}, name: {"top1": .., "agreement": ..}, ...}`` in percent, plus ``"images"``.
    """
    hits: dict[str, list[Tensor]] = {"reference": [], **{k: [] for k in candidates}}
    agree: dict[str, list[Tensor]] = {k: [] for k in candidates}
    with torch.no_grad():
        for batch in batches:
            x, y = batch[0], batch[1]
            ref = _top1(reference(x))
            hits["reference"].append(ref == y)
            for name, fn in candidates.items():
                pred = _top1(fn(x))
                hits[name].append(pred == y)
                agree[name].append(pred == ref)
    out: dict[str, dict[str, float]] = {}
    for name, h in hits.items():
        out[name] = {"top1": 100.0 * torch.cat(h).float().mean().item()}
        if name in agree:
            out[name]["agreement"] = 100.0 * torch.cat(agree[name]).float().mean().item()
    out["images"] = {"count": float(sum(len(h) for h in hits["reference"]))}
    return out


def top_classes(logits: Tensor, k: int = 5) -> Tensor:
    """The ``min(k, classes)`` highest-scoring classes of each row, best first: the one ranking of both the training
    runs' ``val/top1`` / ``val/top5`` and :func:`top1_agreement` (ties broken by ``topk``, not ``argmax``)."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def _top1(logits: Tensor) -> Tensor:
    return top_classes(logits)[:, 0]


def time_precisions(
    name: str,
    precisions: Sequence[str] = PRECISIONS,
    *,
    batch_size: int = 8,
    input_size: int | None = None,
    modes: Sequence[str] = ("forward",),
    repeats: int = 10,
    warmup: int = 2,
    calibration_batches: int = 2,
    options: dict[str, Any] | None = None,
) -> list[Any]:
    """Time our ``name`` in each precision in one process, interleaved (:func:`backbones.benchmark.interleaved`).

    ``fp32`` is the eager model, ``bf16`` the same under CPU bf16 autocast, ``int8`` :func:`quantize_int8` (calibrated
    on random batches: speed does not depend on the calibration) lowered by :func:`lower_int8`; int8 times only
    ``forward``. Returns one :class:`backbones.benchmark.Timing` per (mode, precision), ``impl`` = the precision.
    """
    from . import create_model
    from .benchmark import Timing, _step_fn, interleaved
    from .profile import count_macs
    from .registry import model_card

    for p in precisions:
        check_choice("precision", p, PRECISIONS)
    for m in modes:
        check_choice("mode", m, ("forward", "train"))
    side = input_size or model_card(name).input_size
    with torch.device("meta"):
        macs = count_macs(create_model(name, **(options or {})), side)
    model = create_model(name, **(options or {}))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, side, side, generator=g)
    lowered = None
    if "int8" in precisions and "forward" in modes:
        calib = [torch.randn(batch_size, 3, side, side, generator=g) for _ in range(calibration_batches)]
        lowered = lower_int8(quantize_int8(model, calib), x)
    results = []
    for mode in modes:
        fns, names = [], []
        for p in precisions:
            if p == "int8":
                if mode != "forward":
                    continue
                fns.append(lambda: _no_grad_call(lowered, x))
            else:
                fns.append(_step_fn(model, x, mode, amp=p == "bf16"))
            names.append(p)
        for fn in fns:
            for _ in range(warmup):
                fn()
        wall, _ = interleaved(fns, repeats)
        for p, ts in zip(names, wall):
            results.append(Timing(name, p, mode, batch_size, side, statistics.median(ts), macs))
    return results


def _no_grad_call(module: nn.Module, x: Tensor) -> None:
    with torch.inference_mode():
        module(x)


def format_precision_table(results: Sequence[Any]) -> str:
    """Markdown table: median ms, images/s and time / fp32 time of the same model and mode (< 1: faster)."""
    base = {(r.model, r.mode): r.median_ms for r in results if r.impl == "fp32"}
    lines = [
        "| model | precision | mode | batch | px | median ms | img/s | time / fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = base.get((r.model, r.mode))
        ratio = f"{r.median_ms / b:.3f}" if b else ""
        lines.append(
            f"| {r.model} | {r.impl} | {r.mode} | {r.batch_size} | {r.input_size} | {r.median_ms:.1f} "
            f"| {r.images_per_s:.1f} | {ratio} |"
        )
    return "\n".join(lines)
