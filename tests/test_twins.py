"""Twin parity: for every model whose card names a timm or torchvision twin, random twin weights saved to a file
load with ``pretrained=<file>`` alone (the loader recognises the twin's layout and builds in its numerics) and give the
same logits, and with ``reference_padding=True`` (the alias of the twin's reference) the same features."""

from __future__ import annotations

import pytest
import torch
from conftest import is_heavy, randomize_bn_stats

import backbones

PARITY_SIDE = 128


def _twin_params():
    out = []
    for name in backbones.list_models():
        card = backbones.model_card(name)
        for lib, twin in card.twins.items():
            marks = [pytest.mark.slow] if is_heavy(name) else []
            out.append(pytest.param(name, lib, twin, id=f"{name}-{lib}", marks=marks))
    return out


def build_twin(lib: str, twin: str, **kwargs) -> torch.nn.Module:
    if lib == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(twin, pretrained=False, **kwargs)
    tv = pytest.importorskip("torchvision")
    return tv.models.get_model(twin, weights=None, **kwargs)


@pytest.mark.parametrize("name,lib,twin", _twin_params())
def test_twin_parity(name, lib, twin, tmp_path):
    torch.manual_seed(0)
    ref = build_twin(lib, twin).eval()
    randomize_bn_stats(ref)
    path = tmp_path / f"{twin}.pth"
    torch.save(ref.state_dict(), path)
    ours = backbones.create_model(name, pretrained=str(path), channels_last=False).eval()
    assert ours.reference == backbones.model_card(name).padding_reference  # the twin's, without naming it
    side = max(PARITY_SIDE, backbones.model_card(name).input_size if is_heavy(name) else 0)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert (got - want).abs().max().item() < 1e-4

    if lib != "timm":
        return
    # Intermediate features: every level of ours that the twin also exposes (same stride and channels) is equal.
    tf = build_twin(lib, twin, features_only=True).eval()
    if tf.load_state_dict(ref.state_dict(), strict=False).missing_keys:
        # flatten_sequential wrappers (e.g. densenet) rename `features.conv0` to `features_conv0`: let timm load the
        # file itself (strict) so the twin's features do not run on random weights
        timm = pytest.importorskip("timm")
        overlay = dict(file=str(path))
        tf = timm.create_model(twin, pretrained=True, features_only=True, pretrained_cfg_overlay=overlay).eval()
    f = backbones.create_model(
        name,
        pretrained=str(path),
        reference_padding=True,
        channels_last=False,  # the twin's layout: the same maths in the same float32 order (layouts: test_models)
        features_only=True,
        out_features=backbones.create_model(name).feature_names,
    ).eval()
    with torch.no_grad():
        theirs = tf(x)
        mine = f(x)
    by_key = {(r, c): t for r, c, t in zip(tf.feature_info.reduction(), tf.feature_info.channels(), theirs)}
    compared = 0
    for fi in f.feature_info:
        t = by_key.get((fi.stride, fi.channels))
        if t is None:
            continue
        if t.shape != mine[fi.name].shape:  # valid-padded twins differ in size; checked by the logits above
            continue
        assert (t - mine[fi.name]).abs().max().item() < 1e-4, fi.name
        compared += 1
    assert compared >= 1, "no level of the twin's features_only output lines up with ours"
