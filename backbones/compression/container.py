"""The compressed-model file: pruned positions, shared-weight indices and codebooks, Huffman-coded.

Layout (all integers little-endian)::

    b"DCMP" | uint16 version | uint32 n | zlib(JSON header, n bytes) | sections ...

The header names the model (``create_model`` name and options, so :func:`decode` rebuilds a normal module) and,
per state-dict tensor, its shape, dtype and the byte ranges of its sections:

* ``values``: the stored values — a float32 ``codebook`` of ``2**bits`` entries plus the Huffman-coded index of
  each stored weight (``code_lengths`` one byte per index symbol, then the packed bits), or the raw bytes of
  tensors that are not shared (biases, norm parameters, buffers);
* ``positions`` (pruned weights only): Deep Compression's relative indexing (Han et al. 2015, section 3, Fig. 2):
  the difference between consecutive stored positions in ``index_bits`` bits (8 for conv, 5 for linear layers),
  Huffman-coded. A gap of ``2**index_bits`` or more is written as escape symbols 0, each advancing
  ``2**index_bits - 1`` positions without storing a weight (the paper pads with filler zeros; an escape symbol
  stores no weight and decodes to the same zeros).

Decoding gives back exactly the tensors that were encoded: the pruned-and-shared weights bit for bit.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import huffman
from .share import SharedWeight

MAGIC = b"DCMP"
VERSION = 1


def _positions_to_symbols(mask: Tensor, index_bits: int) -> np.ndarray:
    pos = np.flatnonzero(mask.flatten().numpy())
    gaps = np.diff(np.concatenate([[-1], pos]))  # >= 1
    top = (1 << index_bits) - 1
    escapes = (gaps - 1) // top  # gaps of top or fewer need none
    rest = gaps - escapes * top
    out = np.zeros(int((escapes + 1).sum()), dtype=np.int64)
    out[np.cumsum(escapes + 1) - 1] = rest  # the last symbol of each gap carries the remainder
    return out


def _symbols_to_mask(symbols: np.ndarray, index_bits: int, numel: int) -> np.ndarray:
    top = (1 << index_bits) - 1
    steps = np.where(symbols == 0, top, symbols)
    ends = np.cumsum(steps) - 1
    pos = ends[symbols != 0]
    if len(pos) and pos[-1] >= numel:
        raise ValueError(f"sparse positions run past the tensor's {numel} elements")
    mask = np.zeros(numel, dtype=bool)
    mask[pos] = True
    return mask


class _Writer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(self, data: bytes) -> list[int]:
        self.chunks.append(data)
        self.offset += len(data)
        return [self.offset - len(data), len(data)]

    def huffman(self, symbols: np.ndarray, alphabet: int) -> dict[str, Any]:
        lengths, bits, num_bits = huffman.encode(symbols, alphabet)
        return {
            "lengths": self.add(lengths.tobytes()),
            "bits": self.add(bits),
            "num_bits": num_bits,
            "count": len(symbols),
        }


def encode(
    model: nn.Module,
    shared: dict[str, SharedWeight],
    masks: dict[str, Tensor] | None = None,
    index_bits: tuple[int, int] = (8, 5),
    model_name: str | None = None,
    options: dict[str, Any] | None = None,
) -> bytes:
    """The compressed file of ``model``'s state dict as bytes.

    Args:
        shared: the weights stored as codebook + indices (:func:`~backbones.compression.share.share_weights`).
        masks: pruning masks; pruned weights without sharing are stored as raw float32 values at their positions.
        index_bits: (conv, linear) width of the position differences.
        model_name, options: what ``create_model`` rebuilds it with (default: ``model.model_name`` and its
            ``num_classes``).
    """
    masks = dict(masks or {})
    for name, s in shared.items():
        if s.mask is not None:
            masks[name] = s.mask
    name = model_name or getattr(model, "model_name", None)
    if not name:
        raise ValueError("encode needs model_name= (the create_model name to rebuild the model from)")
    opts = dict(options) if options is not None else {"num_classes": int(getattr(model, "num_classes", 0))}
    writer, entries = _Writer(), []
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        entry: dict[str, Any] = {"name": key, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        mask = masks.get(key)
        if mask is not None:
            bits = index_bits[0] if t.ndim > 2 else index_bits[1]
            entry["positions"] = {"index_bits": bits, **writer.huffman(_positions_to_symbols(mask, bits), 1 << bits)}
        if key in shared:
            s = shared[key]
            if s.mask is None and s.indices.numel() != t.numel():
                raise ValueError(f"{key}: {s.indices.numel()} indices for a dense tensor of {t.numel()} elements")
            if not torch.equal(s.dense().to(t.dtype), t):
                raise ValueError(f"{key}: the model's weight is not the shared weight (call share_weights first)")
            entry["codebook"] = {"bits": s.bits, "values": writer.add(s.codebook.float().numpy().tobytes())}
            entry["codebook"].update(writer.huffman(s.indices.numpy(), 1 << s.bits))
            entry["count"] = int(s.indices.numel())
        else:
            values = t.flatten()[mask.flatten()] if mask is not None else t.flatten()
            entry["raw"] = writer.add(values.numpy().tobytes())
            entry["count"] = int(values.numel())
        entries.append(entry)
    header = zlib.compress(json.dumps({"model": name, "options": opts, "tensors": entries}).encode(), 9)
    return MAGIC + struct.pack("<HI", VERSION, len(header)) + header + b"".join(writer.chunks)


def _huffman(blob: bytes, sec: dict[str, Any]) -> np.ndarray:
    lo, n = sec["lengths"]
    lengths = np.frombuffer(blob[lo : lo + n], dtype=np.uint8)
    lo, n = sec["bits"]
    return huffman.decode(lengths, blob[lo : lo + n], sec["num_bits"], sec["count"])


def decode_state(data: bytes) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """``(model name, create_model options, state dict)`` of a compressed file's bytes."""
    if data[:4] != MAGIC:
        raise ValueError(f"not a compressed-model file (starts with {data[:4]!r}, expected {MAGIC!r})")
    version, n = struct.unpack("<HI", data[4:10])
    if version != VERSION:
        raise ValueError(f"compressed-model file version {version} is not supported (this reader: {VERSION})")
    header = json.loads(zlib.decompress(data[10 : 10 + n]))
    blob = data[10 + n :]
    state = {}
    for e in header["tensors"]:
        dtype = getattr(torch, e["dtype"])
        numel = int(np.prod(e["shape"])) if e["shape"] else 1
        count = e["count"]
        if "codebook" in e:
            cb = e["codebook"]
            lo, k = cb["values"]
            codebook = torch.from_numpy(np.frombuffer(blob[lo : lo + k], dtype=np.float32).copy())
            values = codebook[torch.from_numpy(_huffman(blob, cb))].to(dtype)
        else:
            lo, k = e["raw"]
            values = torch.frombuffer(bytearray(blob[lo : lo + k]), dtype=dtype) if k else torch.zeros(0, dtype=dtype)
        if "positions" in e:
            p = e["positions"]
            symbols = _huffman(blob, p)
            mask = torch.from_numpy(_symbols_to_mask(symbols, p["index_bits"], numel))
            if int(mask.sum()) != count:
                raise ValueError(f"{e['name']}: {int(mask.sum())} positions for {count} stored values")
            full = torch.zeros(numel, dtype=dtype)
            full[mask] = values
            values = full
        state[e["name"]] = values.reshape(e["shape"])
    return header["model"], header["options"], state


def load_compressed(source: str | os.PathLike | bytes, **options: Any) -> nn.Module:
    """Rebuild a normal model from a compressed file (a path or its bytes): ``create_model`` with the stored name
    and options (``options`` override them), then the decoded state dict, loaded strictly."""
    from .. import create_model

    if isinstance(source, bytes):
        data = source
    else:
        with open(os.fspath(source), "rb") as f:
            data = f.read()
    name, stored, state = decode_state(data)
    model = create_model(name, **{**stored, **options})
    model.load_state_dict(state, strict=True)
    return model
