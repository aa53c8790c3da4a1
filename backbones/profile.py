"""Parameter and multiply-accumulate counts measured on the module itself (never on a second copy of the net).

MACs follow the convention of the reference notes: for every Conv2d and Linear, output elements x
(input channels / groups) x kernel area, at batch 1; norms, pooling, activations and adds are not counted.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Trainable-parameter count as the papers give it: every parameter (frozen ones too), no buffers."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> int:
    """Conv + linear multiply-accumulates of one forward pass at batch 1 (eval mode).

    A model built on the ``meta`` device is counted from shapes alone, in milliseconds.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    device = next(model.parameters()).device  # "meta" counts shapes only, without computing anything
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_chans, h, w, device=device))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return total


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass of ``model(x)``, in the model's mode.

    A deterministic stand-in for peak training memory that needs no accelerator: every tensor saved for backward
    (``torch.autograd.graph.saved_tensors_hooks``, which also sees the inputs kept by non-reentrant checkpointing)
    is counted once per storage; parameters and buffers are not activations and are left out. Outputs that no
    backward needs (e.g. a feature map only returned) are not counted.
    """
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip and s.nbytes() > 0:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())
