"""Cadene ``pretrainedmodels``: its networks with random weights (``pretrained=None``), their state dicts saved as the
published files are, load with ``pretrained=<file>`` alone and give Cadene's outputs.

Cadene's ResNeXt and SE-Nets pool with a fixed 7x7 ``AvgPool2d``, which is the global pool at 224 px; the fast
tests swap in the global pool so they can run at 64 px (the 224 px runs are slow tests).
"""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import randomize_bn_stats

import backbones

pm = pytest.importorskip("pretrainedmodels", reason="Cadene's networks: pip install pretrainedmodels")
TOL = 1e-5


def cadene(module: str, ctor: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    net = getattr(importlib.import_module(f"pretrainedmodels.models.{module}"), ctor)(**kwargs).eval()
    randomize_bn_stats(net)
    with torch.no_grad():
        head = net.last_linear if hasattr(net, "last_linear") else net.fc  # Xception's file names it fc
        head.bias.normal_(0, 0.1)
    return net


def compare(name: str, theirs, side: int, tmp_path, expect_reference, batch: int = 2, **options) -> float:
    """Relative logit error of ours loaded from ``theirs``' saved state dict (``theirs`` may be a pair of the saved
    file and Cadene's logits for the seeded input, to run Cadene once for several checks)."""
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))
    if isinstance(theirs, tuple):
        path, want = theirs
    else:
        path = tmp_path / "cadene.pth"
        torch.save(theirs.state_dict(), path)
        with torch.no_grad():
            want = theirs(x)
    ours = backbones.create_model(name, pretrained=str(path), **options).eval()
    assert ours.reference == expect_reference  # chosen from the file alone
    with torch.no_grad():
        got = ours(x)
    if want.shape[1] == got.shape[1] + 1:  # TF ports: Cadene keeps TensorFlow's background class at index 0
        want = want[:, 1:]
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"{name} vs Cadene at {side} px: {err:.2e}")
    return err


def test_nasnetamobile(tmp_path):
    """The only PyTorch NASNet-A Mobile. Its pad-then-crop pools and convs are TF 'SAME' where the padded maps have
    even sides, which holds at 224 (cell_stem_1, reduction_cell_0/1 read 56, 28, 14): reference "tf" reproduces it,
    1001 classes with the background dropped (or kept, with num_classes=1001). Counting the zero padding in the
    stride-2 average pools (reference="timm", timm's NASNet numerics) misses it."""
    theirs = cadene("nasnet_mobile", "NASNetAMobile", num_classes=1001)
    path = tmp_path / "nasnetamobile.pth"
    torch.save(theirs.state_dict(), path)
    with torch.no_grad():
        want = theirs(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    del theirs
    assert compare("nasnet_a_mobile", (path, want), 224, tmp_path, "tf", batch=1) <= TOL
    assert compare("nasnet_a_mobile", (path, want), 224, tmp_path, "tf", batch=1, num_classes=1001) <= TOL
    assert compare("nasnet_a_mobile", (path, want), 224, tmp_path, "timm", batch=1, reference="timm") > 100 * TOL


def test_xception(tmp_path):
    """Cadene's Xception port (= timm's legacy_xception file): valid stem, symmetric pools, eps 1e-5: "timm"."""
    theirs = cadene("xception", "Xception", num_classes=1000)
    path = tmp_path / "xception.pth"
    torch.save(theirs.state_dict(), path)  # the published file's names (fc)
    theirs.last_linear = theirs.fc  # what Cadene's xception() does after loading, and its forward reads
    with torch.no_grad():
        want = theirs(torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)))
    assert compare("xception", (path, want), 112, tmp_path, "timm") <= TOL


@pytest.mark.parametrize(
    "name,module,ctor,side",
    [
        pytest.param("se_resnext50_32x4d", "senet", "se_resnext50_32x4d", 64, id="se_resnext50_32x4d"),
        pytest.param("resnext101_32x4d", "resnext", "ResNeXt101_32x4d", 64, id="resnext101_32x4d"),
        pytest.param("resnext101_64x4d", "resnext", "ResNeXt101_64x4d", 224, id="resnext101_64x4d-224",
                     marks=pytest.mark.slow),
        pytest.param("se_resnet50", "senet", "se_resnet50", 224, id="se_resnet50-224", marks=pytest.mark.slow),
        pytest.param("se_resnet101", "senet", "se_resnet101", 224, id="se_resnet101-224", marks=pytest.mark.slow),
        pytest.param("se_resnet152", "senet", "se_resnet152", 224, id="se_resnet152-224", marks=pytest.mark.slow),
        pytest.param("se_resnext101_32x4d", "senet", "se_resnext101_32x4d", 224, id="se_resnext101-224",
                     marks=pytest.mark.slow),
        pytest.param("senet154", "senet", "senet154", 224, id="senet154-224", marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_resnext_family(name, module, ctor, side, tmp_path):
    kwargs = {"pretrained": None} if module == "senet" else {}
    theirs = cadene(module, ctor, **kwargs)
    if side != 224:
        theirs.avg_pool = torch.nn.AdaptiveAvgPool2d(1)  # their fixed 7x7 pool is this at 224 px
    expect = "timm" if module == "senet" else None
    assert compare(name, theirs, side, tmp_path, expect) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,module,ctor", [("nasnet_a_large", "nasnet", "NASNetALarge"), ("pnasnet5_large", "pnasnet", "PNASNet5Large")]
)
def test_large_tf_ports(name, module, ctor, tmp_path):
    theirs = cadene(module, ctor, num_classes=1001)
    assert compare(name, theirs, 331, tmp_path, "tf") <= TOL
