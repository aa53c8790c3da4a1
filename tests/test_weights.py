"""Weights: ``reference=`` validation and aliases, the published sources as data, format / layout detection, megvii's
ShuffleNetV1 (against an independent functional oracle of their network), SqueezeNet's Caffe conv10 padding, and the
download path (file:// URLs and a pre-filled torch.hub cache; CI has no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn_stats

import backbones
from backbones import registry
from backbones.weights import download
from backbones.weights.sources import FORMATS, Source


# ---- reference= ---------------------------------------------------------------------------------------------------
def test_unaccepted_reference_names_the_accepted_ones():
    with pytest.raises(
        ValueError, match=r"reference='caffe' is not valid for 'xception'; accepted: None .*'timm', 'tf'"
    ):
        backbones.create_model("xception", reference="caffe")
    with pytest.raises(ValueError, match=r"reference='megvi' is not valid .*did you mean 'megvii'"):
        backbones.create_model("shufflenet_v1_g3_x1_0", reference="megvi")


def test_reference_padding_is_the_alias_of_the_twins_reference():
    torch.set_default_device("meta")
    try:
        _reference_padding_aliases()
    finally:
        torch.set_default_device(None)


def _reference_padding_aliases():
    assert backbones.create_model("nasnet_a_large", reference_padding=True).reference == "timm"
    assert backbones.create_model("squeezenet1_0", reference_padding=True).reference == "torchvision"
    m = backbones.create_model("mobilenet_v1_x1_0", reference_padding=True)
    assert m.reference == "timm" and isinstance(m.body.stem.act, torch.nn.ReLU6)  # timm's mobilenetv1_100
    with pytest.raises(ValueError, match=r"reference_padding=True stands for reference='timm'.*reference='tf'"):
        backbones.create_model("nasnet_a_large", reference_padding=True, reference="tf")


def test_every_accepted_reference_builds():
    """The cards' accepted references are ones the builders realise: the smallest model of each (family,
    references) combination, every reference."""
    groups: dict = {}
    for name in backbones.list_models():
        card = backbones.model_card(name)
        key = (card.family, card.references)
        if key not in groups or card.params < backbones.model_card(groups[key]).params:
            groups[key] = name
    for (_, refs), name in groups.items():
        for ref in refs:
            with torch.device("meta"):
                assert backbones.create_model(name, reference=ref).reference == ref, (name, ref)


@pytest.mark.parametrize("side", [6, 7])
def test_nasnet_same_pools_per_reference(side):
    """A stride-2 3x3 'SAME' average pool, window by window: "tf" averages the real pixels only (TensorFlow), "timm"
    and "keras" divide by 9 (zero padding counted); on even sides the padded row/column is the last one."""
    from backbones.nas.ops import OpContext, Pool

    x = torch.rand(1, 1, side, side) + 1
    n = -(-side // 2)
    top = ((n - 1) * 2 + 3 - side) // 2
    want_tf = torch.empty(n, n)
    want_sum = torch.empty(n, n)
    for i in range(n):
        for j in range(n):
            r0, c0 = 2 * i - top, 2 * j - top
            win = x[0, 0, max(r0, 0) : r0 + 3, max(c0, 0) : c0 + 3]
            want_tf[i, j], want_sum[i, j] = win.mean(), win.sum() / 9
    for same_pool, want in (("tf", want_tf), ("timm", want_sum), ("keras", want_sum)):
        pool = Pool("avg", 3, 1, 1, 2, OpContext(reference_padding=True, same_pool=same_pool))
        torch.testing.assert_close(pool(x)[0, 0], want, msg=same_pool)


# ---- the published sources as data ----------------------------------------------------------------------------------
def test_docs_weights_table_is_the_cards():
    from pathlib import Path

    from backbones.weights.table import END, START, weights_table
    from backbones.zoo import replace_between_markers

    doc = (Path(__file__).parents[1] / "docs" / "weights.md").read_text()
    assert replace_between_markers(doc, weights_table(), START, END) == doc, (
        "docs/weights.md is stale: run python tools/model_zoo.py --weights-table"
    )


def test_sources_are_consistent_data():
    for name in backbones.list_models():
        card = backbones.model_card(name)
        names = [s.name for s in card.sources]
        assert len(set(names)) == len(names), name
        assert card.default_source is None or card.default_source in names
        for s in card.sources:
            assert s.format in FORMATS and s.reference in (None, *card.references), (name, s.name)
            assert s.url.startswith(("http://", "https://")), (name, s.name)
            if s.hash_kind == "sha256-prefix":  # torch.hub's convention: the prefix is in the file name
                assert re.search(rf"-{s.hash}\.", s.filename), (name, s.filename)
            if s.hash_kind == "md5":
                assert re.fullmatch(r"[0-9a-f]{32}", s.hash), (name, s.name)
            assert s.hash is None or s.hash_kind is not None
            assert s.top1 is None or 40 < s.top1 < 90, (name, s.name, s.top1)


def test_mobilenet_has_the_sixteen_keras_files():
    files = {s.filename for n in backbones.list_models("mobilenet_v1_*") for s in backbones.model_card(n).sources
             if s.format == "keras_h5"}  # fmt: skip
    assert files == {f"mobilenet_{a}_{r}_tf.h5" for a in ("1_0", "7_5", "5_0", "2_5") for r in (224, 192, 160, 128)}


def test_unknown_source_and_missing_file_name_the_valid_sources():
    with pytest.raises(ValueError, match=r"pretrained='cadene' is not a published source .*'timm', 'torchvision'"):
        backbones.create_model("densenet121", pretrained="cadene")
    with pytest.raises(FileNotFoundError, match=r"pretrained='no/such.pth': no such file.*'timm', 'cadene', 'keras'"):
        backbones.create_model("xception", pretrained="no/such.pth")
    with pytest.raises(ValueError, match=r"densenet264.*has no published ImageNet weights"):
        backbones.create_model("densenet264", pretrained=True)


def test_megvii_source_explains_the_manual_download():
    with pytest.raises(ValueError, match=r"cannot be downloaded automatically: published only in a OneDrive folder"):
        backbones.create_model("shufflenet_v1_g8_x1_0", pretrained=True)


def test_timm_source_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModuleNotFoundError, match=r"cnn-backbones\[timm\]"):
        backbones.create_model("xception", pretrained="timm")


def test_tf_slim_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    (tmp_path / "mobilenet_v1_0.25_128.ckpt.index").write_bytes(b"")
    with pytest.raises(ModuleNotFoundError, match=r"cnn-backbones\[tf\]"):
        backbones.create_model("mobilenet_v1_x0_25", pretrained=str(tmp_path))


# ---- detection ------------------------------------------------------------------------------------------------------
def test_our_file_keeps_the_users_reference(tmp_path):
    src = backbones.create_model("nasnet_a_mobile", num_cells=1, penultimate_filters=96, num_classes=7).eval()
    randomize_bn_stats(src)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ours.pth")
    m = backbones.create_model("nasnet_a_mobile", num_cells=1, penultimate_filters=96, num_classes=7,
                               pretrained=str(tmp_path / "ours.pth")).eval()  # fmt: skip
    assert m.reference is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), src(x))


def test_file_of_another_architecture_names_the_detected_source_and_keys(tmp_path):
    torch.save(backbones.create_model("squeezenet1_1").state_dict(), tmp_path / "sq.pth")
    detected = r"detected: a PyTorch state dict in none of the known layouts .*\) does not fit 'densenet121'.*missing"
    with pytest.raises(backbones.CheckpointMismatchError, match=detected):
        backbones.create_model("densenet121", pretrained=str(tmp_path / "sq.pth"))


# ---- megvii ShuffleNetV1 ------------------------------------------------------------------------------------------
def megvii_shuffle(x: torch.Tensor, g: int) -> torch.Tensor:
    """ShuffleNet-Series blocks.py: reshape to (batch, c // g, g, h, w), permute groups first, flatten."""
    b, c, h, w = x.shape
    return x.reshape(b, c // g, g, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


def megvii_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, g: int, repeats=(4, 8, 4)) -> torch.Tensor:
    """Their ShuffleNetV1 (network.py, blocks.py) run functionally from their state dict: an oracle independent of
    our modules and of our key mapping."""

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    x = F.relu(bn(F.conv2d(x, sd["first_conv.0.weight"], stride=2, padding=1), "first_conv.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    k = 0
    for n in repeats:
        for i in range(n):
            p = f"features.{k}."
            stride = 2 if i == 0 else 1
            w1 = sd[p + "branch_main_1.0.weight"]
            y = F.conv2d(x, w1, groups=x.shape[1] // w1.shape[1])  # first unit of stage 2: one group
            y = F.relu(bn(y, p + "branch_main_1.1"))
            y = megvii_shuffle(y, g)
            y = bn(F.conv2d(y, sd[p + "branch_main_1.3.weight"], stride=stride, padding=1, groups=y.shape[1]),
                   p + "branch_main_1.4")  # fmt: skip
            y = bn(F.conv2d(y, sd[p + "branch_main_2.0.weight"], groups=g), p + "branch_main_2.1")
            x = F.relu(x + y) if stride == 1 else torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(y)), 1)
            k += 1
    return F.linear(x.mean((2, 3)), sd["classifier.0.weight"])


def test_megvii_shuffle_is_the_inverse_of_the_papers():
    from backbones.layers import channel_shuffle

    x = torch.randn(2, 48, 3, 3)
    for g in (3, 4, 8):
        assert torch.equal(channel_shuffle(x, g, inverse=True), megvii_shuffle(x, g))
        assert torch.equal(channel_shuffle(channel_shuffle(x, g), g, inverse=True), x)
        assert not torch.equal(channel_shuffle(x, g), megvii_shuffle(x, g))


def test_megvii_checkpoint_gives_their_outputs(tmp_path):
    """A checkpoint in their layout ({'state_dict': ...} with DataParallel 'module.' prefixes) loads by itself in
    their shuffle order; the paper's order computes another network from the same weights."""
    g = 8
    donor = backbones.create_model("shufflenet_v1_g8_x0_5").eval()  # only for the tensor shapes, in order
    randomize_bn_stats(donor)
    tensors = list(donor.state_dict().values())
    names = ["first_conv.0.weight"] + [f"first_conv.1.{b}" for b in ("weight", "bias", "running_mean",
                                                                     "running_var", "num_batches_tracked")]  # fmt: skip
    for k in range(16):
        for part in ("branch_main_1.0", "branch_main_1.1", "branch_main_1.3", "branch_main_1.4", "branch_main_2.0",
                     "branch_main_2.1"):  # fmt: skip
            bn = part.endswith((".1", ".4"))
            fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") if bn else ("weight",)
            names += [f"features.{k}.{part}.{f}" for f in fields]
    names.append("classifier.0.weight")
    assert len(names) == len(tensors)
    theirs = dict(zip(names, tensors))
    torch.save({"epoch": 240, "state_dict": {f"module.{k}": v for k, v in theirs.items()}}, tmp_path / "g8.pth.tar")

    ours = backbones.create_model("shufflenet_v1_g8_x0_5", pretrained=str(tmp_path / "g8.pth.tar")).eval()
    assert ours.reference == "megvii"
    paper = backbones.create_model("shufflenet_v1_g8_x0_5", pretrained=str(tmp_path / "g8.pth.tar"), reference=None)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = megvii_forward(theirs, x, g)
        err = ((ours(x) - want).abs().max() / want.abs().max()).item()
        assert err < 1e-5, err
        assert ((paper.eval()(x) - want).abs().max() / want.abs().max()).item() > 1e-3


# ---- SqueezeNet: the Caffe prototxt's conv10 padding ------------------------------------------------------------
def test_squeezenet_caffe_pads_conv10(tmp_path):
    tv = pytest.importorskip("torchvision")
    ref = tv.models.squeezenet1_0(weights=None).eval()
    with torch.no_grad():
        ref.classifier[1].bias.normal_(0, 0.5)  # a non-zero bias is what the padded ring averages in
    torch.save(ref.state_dict(), tmp_path / "sq.pth")
    ref.classifier[1].padding = (1, 1)  # train_val.prototxt of SqueezeNet_v1.0: conv10 "pad: 1"
    caffe = backbones.create_model("squeezenet1_0", pretrained=str(tmp_path / "sq.pth"), reference="caffe").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(caffe(x), want, rtol=1e-5, atol=1e-5)
        plain = backbones.create_model("squeezenet1_0", pretrained=str(tmp_path / "sq.pth")).eval()
        assert (plain(x) - want).abs().max() > 1e-3


# ---- downloads ------------------------------------------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def served_source(tmp_path, corrupt: bool = False) -> tuple[Source, torch.nn.Module]:
    """torchvision's squeezenet1_1 file served from a file:// URL, its sha256 prefix in the name as torchvision's (and
    Cadene's) are: the card's torchvision source with another URL."""
    tv = pytest.importorskip("torchvision")
    src = tv.models.squeezenet1_1(weights=None).eval()
    raw = tmp_path / "raw.pth"
    torch.save(src.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:8]
    if corrupt:
        digest = "0" * 8 if digest != "0" * 8 else "1" * 8
    served = tmp_path / "served" / f"squeezenet1_1-{digest}.pth"
    served.parent.mkdir()
    raw.rename(served)
    card_source = backbones.model_card(NAME).source("torchvision")
    return dataclasses.replace(card_source, url=served.as_uri(), hash=digest), src


NAME = "squeezenet1_1"


def with_source(monkeypatch, name: str, source: Source) -> None:
    entry = registry._REGISTRY[name]
    card = dataclasses.replace(entry.card, sources=(source,), default_source=source.name)
    monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(entry, card=card))


def test_download_into_the_hub_cache_then_from_it(tmp_path, hub, monkeypatch):
    source, src = served_source(tmp_path)
    with_source(monkeypatch, NAME, source)
    m = backbones.create_model(NAME, pretrained=True).eval()
    assert (hub / source.filename).is_file() and m.reference == "torchvision"
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded again"))
    again = backbones.create_model(NAME, pretrained="torchvision").eval()  # the cached file, hash-checked
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(again(x), src(x))


def test_corrupted_download_names_both_hashes_and_leaves_nothing(tmp_path, hub, monkeypatch):
    source, _ = served_source(tmp_path, corrupt=True)
    with_source(monkeypatch, NAME, source)
    actual = hashlib.sha256((tmp_path / "served" / source.filename).read_bytes()).hexdigest()
    with pytest.raises(download.HashMismatchError, match=rf"sha256 {actual}.*starting with {source.hash}"):
        backbones.create_model(NAME, pretrained=True)
    assert not hub.exists() or not any(hub.iterdir())


def test_corrupted_cached_file_is_refused_and_kept(tmp_path, hub, monkeypatch):
    source, _ = served_source(tmp_path)
    with_source(monkeypatch, NAME, source)
    hub.mkdir(parents=True)
    (hub / source.filename).write_bytes(b"not the published file")  # e.g. the user's own file under that name
    with pytest.raises(download.HashMismatchError, match=rf"{hashlib.sha256(b'not the published file').hexdigest()}"):
        backbones.create_model(NAME, pretrained=True)
    assert (hub / source.filename).read_bytes() == b"not the published file"


def test_interrupted_download_leaves_no_file_under_the_final_name(tmp_path, hub, monkeypatch):
    source, _ = served_source(tmp_path)
    with_source(monkeypatch, NAME, source)
    real = torch.hub.urlopen

    class Broken:
        def __init__(self, url):
            self.inner = real(url)
            self.headers = self.inner.headers
            self.calls = 0

        def info(self):
            return self.inner.info()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionResetError("connection lost mid-download")
            return self.inner.read(n)

    monkeypatch.setattr(torch.hub, "urlopen", lambda req, *a, **k: Broken(req.full_url))
    with pytest.raises(ConnectionResetError):
        backbones.create_model(NAME, pretrained=True)
    assert not (hub / source.filename).exists()
    assert not [p for p in hub.iterdir()] if hub.exists() else True  # no partial file either


def test_nothing_downloads_unless_asked(monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    for name in ("xception", "nasnet_a_mobile", "mobilenet_v1_x0_5"):
        with torch.device("meta"):
            backbones.create_model(name)
