"""TF-slim NASNet-A Mobile / Large and PNASNet-5 Large checkpoints, without TensorFlow.

The fixtures in tests/data/tfslim/ were made by TF-slim's own ``nets/nasnet`` code with random weights and BatchNorm
statistics (tests/data/tfslim/README.md says how): each is a checkpoint packed as TF-slim publishes its tarballs
(``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001``) and the logits (and auxiliary logits) TF-slim's
inference graph computed on an 8-bit image. ``pretrained=<tarball>`` must recognise the file, build the model in
``reference="tf"`` and give TF-slim's outputs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import backbones
from backbones.weights import CheckpointMismatchError
from backbones.weights.tf_checkpoint import _block, _entries, _varint

DATA = Path(__file__).parent / "data" / "tfslim"
# fixture -> (model, our options for TF-slim's small config, classes TF-slim built it with)
FIXTURES = {
    "nasnet-a_mobile_tiny": ("nasnet_a_mobile", dict(num_cells=1, penultimate_filters=96), 1001),
    "nasnet-a_large_tiny": ("nasnet_a_large", dict(num_cells=1, penultimate_filters=96), 11),
    "pnasnet-5_large_tiny": ("pnasnet5_large", dict(num_cells=(1, 1, 1), penultimate_filters=80), 11),
}
TOL = 1e-5  # max |ours - TF-slim| / max |TF-slim|


def tarball(tmp_path: Path, fixture: str) -> str:
    """A copy of the fixture (the loader extracts an archive next to itself, which must not be tests/data)."""
    dst = tmp_path / f"{fixture}.tar.gz"
    shutil.copy(DATA / f"{fixture}.tar.gz", dst)
    return str(dst)


def oracle(fixture: str) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    data = np.load(DATA / f"{fixture}.npz")
    x = (data["image"].astype(np.float32) - np.float32(127.5)) / np.float32(127.5)  # as fixture.py fed TF-slim
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), dict(data)


def rel_err(got: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(got.detach().numpy() - ref).max() / np.abs(ref).max())


CASES = [(f, False) for f in FIXTURES] + [(f, True) for f in FIXTURES if f != "nasnet-a_mobile_tiny"]


@pytest.mark.parametrize(("fixture", "aux_head"), CASES, ids=[f"{f}-{'aux' if a else 'no_aux'}" for f, a in CASES])
def test_tfslim_nasnet_logits(tmp_path, fixture, aux_head):
    name, opts, classes = FIXTURES[fixture]
    x, ref = oracle(fixture)
    # a 1001-class file into the default 1000-class model: TensorFlow's background class (row 0) is dropped
    num_classes = 1000 if classes == 1001 else classes
    model = backbones.create_model(
        name, pretrained=tarball(tmp_path, fixture), num_classes=num_classes, aux_head=aux_head, input_size=100,
        drop_rate=0.0, **opts,
    )  # fmt: skip
    assert model.reference == "tf"
    expected = ref["logits"][:, 1:] if num_classes == classes - 1 else ref["logits"]
    model.eval()
    with torch.no_grad():
        err = rel_err(model(x), expected)
    print(f"{fixture} -> {name} ({num_classes} classes, aux_head={aux_head}): logits {err:.2e}")
    assert err <= TOL
    if aux_head:
        # TF-slim builds the aux head in training graphs only; the fixture ran it in inference numerics, so run ours
        # with BatchNorm in eval mode (drop_rate 0, drop path off by default)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        with torch.no_grad():
            logits, aux = model(x)
        aux_err = rel_err(aux, ref["aux_logits"])
        print(f"{fixture} -> {name}: aux logits {aux_err:.2e}")
        assert rel_err(logits, expected) <= TOL
        assert aux_err <= TOL


def test_tfslim_nasnet_1001_classes_kept(tmp_path):
    """A 1001-class model keeps the background row: its logits are TF-slim's, all 1001."""
    name, opts, _ = FIXTURES["nasnet-a_mobile_tiny"]
    x, ref = oracle("nasnet-a_mobile_tiny")
    model = backbones.create_model(name, pretrained=tarball(tmp_path, "nasnet-a_mobile_tiny"), num_classes=1001,
                                   input_size=100, **opts).eval()  # fmt: skip
    with torch.no_grad():
        assert rel_err(model(x), ref["logits"]) <= TOL


def rename_variable(prefix: Path, name: str, new: str | None) -> None:
    """Rewrite ``<prefix>.index`` with variable ``name`` renamed to ``new`` (None: removed); the data file is left as
    TensorFlow wrote it. The table: one uncompressed LevelDB block of sorted, unshared keys, an index block pointing at
    it, an empty metaindex and the footer."""
    path = prefix.parent / (prefix.name + ".index")
    data = path.read_bytes()
    footer = data[-48:]
    index = _block(data, footer[_skip_handle(footer) :], "index")
    pairs = [(k, v) for _, h in _entries(index) for k, v in _entries(_block(data, h, "index"))]
    assert name.encode() in dict(pairs), f"{name} is not in the checkpoint"
    kept = sorted((new.encode() if k == name.encode() else k, v) for k, v in pairs if new or k != name.encode())

    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))

    def block(items: list[tuple[bytes, bytes]]) -> bytes:
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in items)
        return body + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point, at 0

    out = bytearray()

    def put(b: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(b))
        out.extend(b + b"\0" * 5)  # type 0 (uncompressed); the crc32c is not checked by the reader under test
        return handle

    data_handle = put(block(kept))
    meta_handle = put(block([]))
    index_handle = put(block([(kept[-1][0], data_handle)]))
    handles = meta_handle + index_handle
    out.extend(handles + b"\0" * (40 - len(handles)) + (0xDB4775248B80FB57).to_bytes(8, "little"))
    path.write_bytes(bytes(out))


def _skip_handle(footer: bytes) -> int:
    """Bytes of the footer's first BlockHandle (the metaindex: two varints)."""
    pos = 0
    for _ in range(2):
        while footer[pos] >= 0x80:
            pos += 1
        pos += 1
    return pos


def extracted(tmp_path: Path, fixture: str) -> Path:
    import tarfile

    with tarfile.open(DATA / f"{fixture}.tar.gz") as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    return tmp_path / "ckpt"


def test_tfslim_nasnet_missing_variable_named(tmp_path):
    ckpt = extracted(tmp_path, "nasnet-a_large_tiny")
    rename_variable(ckpt / "model.ckpt", "cell_0/comb_iter_1/left/bn_sep_5x5_2/moving_variance", None)
    name, opts, _ = FIXTURES["nasnet-a_large_tiny"]
    with pytest.raises(CheckpointMismatchError) as e:
        backbones.create_model(name, pretrained=str(ckpt), num_classes=11, input_size=100, **opts)
    msg = str(e.value)
    assert "(detected: a TF-slim checkpoint, reference='tf') does not fit 'nasnet_a_large'" in msg
    assert "1 missing: cells.cell_0.ops.2.bn2.running_var" in msg


def test_tfslim_nasnet_unknown_variable_named(tmp_path):
    ckpt = extracted(tmp_path, "pnasnet-5_large_tiny")
    rename_variable(ckpt / "model.ckpt", "cell_1/beginning_bn/gamma", "cell_1/mystery_bn/gamma")
    name, opts, _ = FIXTURES["pnasnet-5_large_tiny"]
    with pytest.raises(CheckpointMismatchError) as e:
        backbones.create_model(name, pretrained=str(ckpt / "model.ckpt"), num_classes=11, input_size=100, **opts)
    msg = str(e.value)
    assert "(detected: a TF-slim checkpoint, reference='tf') does not fit 'pnasnet5_large'" in msg
    # PNASNet's cell_1 is its first reduction: our reduction_cell_0
    assert "1 missing: cells.reduction_cell_0.pre.0.bn.weight" in msg
    assert "1 unexpected: <unmapped TF-slim variable cell_1/mystery_bn/gamma>" in msg


def test_tfslim_nasnet_wrong_network_named(tmp_path):
    """PNASNet-5's checkpoint into NASNet-A and NASNet-A's into MobileNet: refused, naming what the file holds."""
    _, opts, _ = FIXTURES["nasnet-a_large_tiny"]
    with pytest.raises(CheckpointMismatchError) as e:
        backbones.create_model("nasnet_a_large", pretrained=tarball(tmp_path, "pnasnet-5_large_tiny"), num_classes=11,
                               input_size=100, **opts)  # fmt: skip
    msg = str(e.value)
    assert "(detected: a TF-slim checkpoint, reference='tf'): the TF-slim checkpoint holds a PNASNet-5 network" in msg
    assert "load it into pnasnet5_large" in msg
    with pytest.raises(CheckpointMismatchError, match=r"detected: a TF-slim checkpoint.*no MobileNet v1"):
        backbones.create_model("mobilenet_v1_x0_25", pretrained=tarball(tmp_path, "nasnet-a_mobile_tiny"))


def test_tfslim_source_from_the_hub_cache(tmp_path, monkeypatch):
    """pretrained="tf-slim": the card's published tarball, found in torch.hub's cache under its published file name
    (pre-filled here with the fixture; CI has no network), extracted next to itself and loaded in reference="tf"."""
    source = backbones.model_card("nasnet_a_mobile").source("tf-slim")
    assert source.filename == "nasnet-a_mobile_04_10_2017.tar.gz" and source.num_classes == 1001
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("nothing to download"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(DATA / "nasnet-a_mobile_tiny.tar.gz", tmp_path / "hub" / "checkpoints" / source.filename)
    name, opts, _ = FIXTURES["nasnet-a_mobile_tiny"]
    x, ref = oracle("nasnet-a_mobile_tiny")
    model = backbones.create_model(name, pretrained="tf-slim", input_size=100, **opts).eval()
    assert model.reference == "tf"
    with torch.no_grad():
        assert rel_err(model(x), ref["logits"][:, 1:]) <= TOL


def test_tfslim_without_tensorflow(tmp_path, monkeypatch):
    """No TensorFlow needed to load (the fixtures above load without it too); a checkpoint using what the reader does
    not implement (here its table block marked snappy-compressed) needs TensorFlow, and the error names the extra."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    name, opts, _ = FIXTURES["nasnet-a_mobile_tiny"]
    backbones.create_model(name, pretrained=tarball(tmp_path, "nasnet-a_mobile_tiny"), input_size=100, **opts)
    index = extracted(tmp_path, "nasnet-a_mobile_tiny") / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    footer = bytes(data[-48:])
    handle = footer[_skip_handle(footer) :]
    offset, size = _varint(handle, 0)[0], _varint(handle, _varint(handle, 0)[1])[0]
    data[offset + size] = 1  # the index block's compression type: 1 = snappy
    index.write_bytes(bytes(data))
    with pytest.raises(ModuleNotFoundError, match=r"compressed table block.*cnn-backbones\[tf\]"):
        backbones.create_model(name, pretrained=str(index.parent), input_size=100, **opts)
