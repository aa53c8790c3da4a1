"""Deep Compression: pruning to SqueezeNet's Table 1, masks held through training, k-means sharing, Huffman coding,
and the compressed file's exact round trip."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import backbones
from backbones import compression as dc
from backbones.compression import huffman

ROOT = Path(__file__).resolve().parents[1]
SQUEEZENET_PLAN = ROOT / "conf" / "compression" / "squeezenet1_0.yaml"

# SqueezeNet (arXiv:1602.07360) Table 1, "#parameter after pruning" per layer; 421,098 in total
TABLE1_AFTER = {
    "conv1": 14_208, "fire2": 5_746, "fire3": 6_258, "fire4": 20_646, "fire5": 24_742, "fire6": 44_700,
    "fire7": 46_236, "fire8": 77_581, "fire9": 77_581, "classifier": 103_400,
}  # fmt: skip
TABLE1_BEFORE_TOTAL = 1_248_424


def squeezenet_plan(bits: int = 6) -> dc.CompressionPlan:
    cfg = yaml.safe_load(SQUEEZENET_PLAN.read_text())
    cfg["bits"] = bits
    return dc.CompressionPlan.from_mapping(cfg)


def layer_of(name: str) -> str:
    return name.split(".")[1] if name.startswith("body.") else name.split(".")[0]


def test_squeezenet_plan_prunes_to_table1_counts():
    torch.manual_seed(0)
    model = backbones.create_model("squeezenet1_0", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == TABLE1_BEFORE_TOTAL
    masks = dc.prune(model, squeezenet_plan())
    after: dict[str, int] = {}
    for name, p in model.named_parameters():  # biases are never pruned (and start at zero: count them all)
        kept = int(masks[name].sum()) if name in masks else p.numel()
        after[layer_of(name)] = after.get(layer_of(name), 0) + kept
        if name in masks:
            assert torch.count_nonzero(p.detach()[~masks[name]]) == 0
    assert after == TABLE1_AFTER
    assert sum(after.values()) == 421_098


def test_kept_weights_are_the_largest():
    torch.manual_seed(1)
    lin = torch.nn.Linear(50, 40)
    w0 = lin.weight.detach().clone()
    plan = dc.CompressionPlan.from_mapping({"layers": [{"pattern": "weight", "density": 0.25}]})
    masks = dc.prune(lin, plan)
    mask = masks["weight"]
    assert int(mask.sum()) == math.ceil(0.25 * 2000)
    assert w0[mask].abs().min() >= w0[~mask].abs().max()
    assert torch.equal(lin.weight.detach(), w0 * mask)


def test_mask_keeper_holds_pruned_weights_at_zero_through_training():
    torch.manual_seed(2)
    model = backbones.create_model("squeezenet1_1", num_classes=5)
    plan = dc.CompressionPlan.from_mapping({"density": 0.3})
    masks = dc.prune(model, plan)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    keeper = dc.MaskKeeper(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(2, 3, 48, 48), torch.randint(0, 5, (2,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    keeper.remove()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
        assert not torch.equal(params[name][mask], before[name][mask]), f"{name} did not train"


def test_kmeans_recovers_separated_clusters_and_shares_exactly():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([-2.0, -0.5, 0.7, 3.0])
    values = centres[torch.randint(0, 4, (4000,), generator=g)] + 0.01 * torch.randn(4000, generator=g)
    c, idx = dc.kmeans_1d(values, 4)
    assert torch.allclose(c.sort().values, centres, atol=0.01)
    assert ((values - c[idx]).abs() < 0.05).all()

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1))
    plan = dc.CompressionPlan.from_mapping({"bits": 3, "layers": [{"pattern": "0.weight", "density": 0.5}]})
    masks = dc.prune(model, plan)
    shared = dc.share_weights(model, plan, masks)
    for name, s in shared.items():
        w = dict(model.named_parameters())[name].detach()
        assert torch.equal(w, s.dense())
        stored = w[masks[name]] if name in masks else w.flatten()
        assert set(stored.unique().tolist()) <= set(s.codebook.tolist())
        assert len(s.codebook) == 8


@pytest.mark.parametrize(
    "stream",
    [
        np.random.default_rng(0).geometric(0.2, 20_000).clip(max=63),
        np.random.default_rng(1).integers(0, 64, 5_000),
        np.full(100, 7),
        np.array([3]),
        np.zeros(0, dtype=np.int64),
    ],
    ids=["geometric", "uniform", "one-symbol", "single", "empty"],
)
def test_huffman_round_trip_within_the_entropy_bound(stream):
    lengths, data, num_bits = huffman.encode(stream, 64)
    assert np.array_equal(huffman.decode(lengths, data, num_bits, len(stream)), stream)
    used = lengths[lengths > 0].astype(float)
    if len(used) > 1:
        assert abs(np.sum(2.0**-used) - 1.0) < 1e-12  # a complete prefix code (Kraft equality)
    if len(stream) and len(np.unique(stream)) > 1:
        p = np.bincount(stream, minlength=64) / len(stream)
        entropy = -np.sum(p[p > 0] * np.log2(p[p > 0]))
        assert entropy <= num_bits / len(stream) < entropy + 1  # Shannon's bound for an optimal prefix code


def test_compressed_file_round_trip_is_exact(tmp_path):
    torch.manual_seed(4)
    model = backbones.create_model("squeezenet1_0", num_classes=10, channels_last=False)
    model.eval()
    plan = squeezenet_plan(bits=5)
    masks = dc.prune(model, plan)
    with torch.no_grad():  # a long run of pruned weights: gaps beyond 2**8 need the escape symbol
        model.body.fire9.expand3x3.weight.view(-1)[1000:3000] = 0
        masks["body.fire9.expand3x3.weight"].view(-1)[1000:3000] = False
    shared = dc.share_weights(model, plan, masks)
    blob = dc.encode(model, shared, masks, plan.index_bits)
    path = tmp_path / "squeezenet.dcmp"
    path.write_bytes(blob)
    assert path.stat().st_size == len(blob)
    rebuilt = dc.load_compressed(path, channels_last=False)  # the layout of `model`, so outputs match bit for bit
    assert rebuilt.model_name == "squeezenet1_0" and rebuilt.num_classes == 10
    for (k, a), (k2, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 3, 64, 64)
    rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))


def test_squeezenet_compresses_below_half_a_megabyte_at_6_bits():
    """Table 2's claim: 4.8 MB -> 0.47 MB (6 bit) / 0.66 MB (8 bit); measured here on random weights."""
    torch.manual_seed(5)
    sizes = {}
    for bits in (6, 8):
        model = backbones.create_model("squeezenet1_0", num_classes=1000)
        plan = squeezenet_plan(bits)
        masks = dc.prune(model, plan)
        sizes[bits] = len(dc.encode(model, dc.share_weights(model, plan, masks), masks, plan.index_bits))
    assert sizes[6] < 500_000 < sizes[8] < 4 * TABLE1_BEFORE_TOTAL / 5


def test_plan_errors_name_the_value():
    with pytest.raises(ValueError, match=r"density=1.5 is not valid"):
        dc.CompressionPlan.from_mapping({"layers": [{"pattern": "x", "density": 1.5}]})
    with pytest.raises(ValueError, match=r"unknown key compression.layers\[0\].densty"):
        dc.CompressionPlan.from_mapping({"layers": [{"pattern": "x", "densty": 0.5}]})
    plan = dc.CompressionPlan.from_mapping({"layers": [{"pattern": "body.fire99.*", "density": 0.5}]})
    with pytest.raises(ValueError, match=r"pattern 'body.fire99.\*' matches no conv/linear weight"):
        dc.prune(backbones.create_model("squeezenet1_1"), plan)
    with pytest.raises(ValueError, match="not a compressed-model file"):
        dc.load_compressed(b"PK\x03\x04 not ours")
