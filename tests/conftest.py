"""Shared fixtures: registry parametrisation with the model name as test id, small inputs, slowness from the card."""

from __future__ import annotations

import os

import pytest
import torch

import backbones

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A model is "heavy" when one small forward/backward costs seconds on 2 cores: decided from its card, not by name.
HEAVY_MACS = 6e9


def is_heavy(name: str) -> bool:
    card = backbones.model_card(name)
    return (card.macs or 0) > HEAVY_MACS or card.params > 60e6


def registry_params(detection_ready: bool | None = None, heavy_slow: bool = True):
    """``pytest.param`` per registered model; heavy ones get the ``slow`` mark when ``heavy_slow``."""
    out = []
    for name in backbones.list_models(detection_ready=detection_ready):
        marks = [pytest.mark.slow] if heavy_slow and is_heavy(name) else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    """64 px for detection-ready (ImageNet) models, 32 px for CIFAR models."""
    side = 64 if backbones.model_card(name).detection_ready else 32
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def randomize_bn_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine params so eval-mode comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            if m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def free_port() -> int:
    """A TCP port nobody listens on now (for a process-group rendezvous on localhost)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
