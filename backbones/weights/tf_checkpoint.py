"""Reading TensorFlow checkpoints (the V2 "tensor bundle" that ``tf.train.Saver`` and ``tf.train.Checkpoint`` write)
without TensorFlow.

A checkpoint ``<prefix>`` is two kinds of file (TensorFlow ``core/util/tensor_bundle/tensor_bundle.{h,cc}``):

* ``<prefix>.index``: a LevelDB-format sorted table (``core/lib/io/table_builder.cc``, LevelDB's ``table_format.md``):
  data blocks of prefix-compressed ``key -> value`` entries, an index block pointing at them and a 48-byte footer
  ending in the magic ``0xdb4775248b80fb57``. The key ``""`` holds a ``BundleHeaderProto`` (number of shards,
  endianness); every other key is a variable name whose value is a ``BundleEntryProto`` (dtype, shape, shard, offset
  and byte size of its data; ``tensor_bundle.proto``). TensorFlow writes the table uncompressed.
* ``<prefix>.data-<shard>-of-<shards>``: the tensors' raw bytes, row-major, at those offsets.

Both protos are decoded here from the protobuf wire format (varints and length-delimited fields), so no protobuf
package is needed either. Not supported (:class:`UnsupportedCheckpointError`, the caller may fall back to
TensorFlow): compressed tables, partitioned variables saved as slices. String tensors are not weights and are
skipped. The block and tensor CRC32C checksums are not verified (the standard library has no CRC32C); every entry's
byte size is checked against its dtype and shape and against the data file's length.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_MAGIC = 0xDB4775248B80FB57  # LevelDB kTableMagicNumber
_FOOTER = 48  # two BlockHandles padded to 40 bytes + the 8-byte magic
_TRAILER = 5  # after every block: compression type (1 byte) + masked crc32c (4 bytes)
# TensorFlow types.proto DataType -> numpy; DT_STRING (7) is handled apart, DT_BFLOAT16 (14) is widened
_DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64, 10: np.bool_,
    17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64,
}  # fmt: skip
_STRING, _BFLOAT16 = 7, 14


class UnsupportedCheckpointError(NotImplementedError):
    """The checkpoint uses a feature this reader does not implement (TensorFlow itself can read it)."""


@dataclass(frozen=True)
class Entry:
    """Where one variable's bytes are: ``BundleEntryProto`` fields."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    sliced: bool


# ---- protobuf wire format and LevelDB varints ---------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """``(field number, value)`` of every field of a serialized protobuf message, in order."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos : pos + n]), pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf: bytes) -> tuple[int, ...]:
    """A ``TensorShapeProto``: field 2 repeats ``Dim`` (field 1: size)."""
    dims = []
    for number, value in _fields(buf):
        if number == 2:
            size = next((_int64(v) for n, v in _fields(value) if n == 1), 0)
            dims.append(size)
    return tuple(dims)


def _entry(buf: bytes) -> Entry:
    f: dict[int, int | bytes] = {}
    sliced = False
    for number, value in _fields(buf):
        sliced |= number == 7
        f[number] = value
    shape = _shape(f[2]) if 2 in f else ()
    return Entry(int(f.get(1, 0)), shape, int(f.get(3, 0)), _int64(int(f.get(4, 0))), _int64(int(f.get(5, 0))), sliced)


# ---- the LevelDB table ----------------------------------------------------------------------------------------------
def _block(data: bytes, handle: bytes, path: str) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + _TRAILER > len(data):
        raise ValueError(f"{path}: a block runs past the end of the file (truncated?)")
    kind = data[offset + size]
    if kind != 0:
        raise UnsupportedCheckpointError(f"{path}: compressed table block (type {kind}); only uncompressed is read")
    return data[offset : offset + size]


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a block, restoring the shared key prefixes."""
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    out = []
    key = b""
    pos = 0
    while pos < end:
        shared, pos = _varint(block, pos)
        own, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + own]
        pos += own
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


def read_index(prefix: str) -> tuple[dict[str, Entry], int, bool]:
    """The entries of ``<prefix>.index``, the number of data shards and whether the data is big-endian."""
    path = prefix + ".index"
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise ValueError(f"{path} is not a TensorFlow checkpoint index (no LevelDB table footer)")
    footer = data[-_FOOTER:]
    _, pos = _varint(footer, 0)  # metaindex offset, size (unused: TensorFlow writes no filter blocks)
    _, pos = _varint(footer, pos)
    index = _block(data, footer[pos:], path)
    entries: dict[str, Entry] = {}
    shards, big_endian = 1, False
    for _, handle in _entries(index):
        for key, value in _entries(_block(data, handle, path)):
            if key == b"":  # BundleHeaderProto: 1 num_shards, 2 endianness (1 = BIG)
                header = dict(_fields(value))
                shards, big_endian = int(header.get(1, 1)), header.get(2, 0) == 1
            else:
                entries[key.decode("utf-8")] = _entry(value)
    return entries, shards, big_endian


def read_variables(prefix: str) -> dict[str, np.ndarray]:
    """Every numeric variable of the TensorFlow checkpoint ``prefix`` (``<prefix>.index`` + ``.data-*``).

    Raises:
        FileNotFoundError: the index or a data shard is missing.
        ValueError: a file that is not a checkpoint, or a variable whose bytes do not fit its dtype and shape.
        UnsupportedCheckpointError: compressed tables or partitioned (sliced) variables.
    """
    entries, shards, big_endian = read_index(prefix)
    out: dict[str, np.ndarray] = {}
    files = {}
    try:
        for name, e in entries.items():
            if e.sliced:
                raise UnsupportedCheckpointError(f"{prefix}: {name!r} is a partitioned variable (saved as slices)")
            if e.dtype == _STRING:
                logger.debug("%s: skipping the string tensor %r", prefix, name)
                continue
            if e.dtype not in _DTYPES and e.dtype != _BFLOAT16:
                raise UnsupportedCheckpointError(f"{prefix}: {name!r} has TensorFlow dtype {e.dtype}")
            if e.shard not in files:
                shard = f"{prefix}.data-{e.shard:05d}-of-{shards:05d}"
                if not os.path.isfile(shard):
                    raise FileNotFoundError(f"TensorFlow checkpoint data shard {shard!r} does not exist")
                files[e.shard] = open(shard, "rb")  # noqa: SIM115 (closed in finally)
            out[name] = _read(files[e.shard], name, e, big_endian)
    finally:
        for f in files.values():
            f.close()
    return out


def _read(f, name: str, e: Entry, big_endian: bool) -> np.ndarray:
    dtype = np.dtype(np.uint16 if e.dtype == _BFLOAT16 else _DTYPES[e.dtype])
    if big_endian:
        dtype = dtype.newbyteorder(">")
    count = int(np.prod(e.shape, dtype=np.int64))
    if e.size != count * dtype.itemsize or e.offset < 0:
        raise ValueError(f"{f.name}: {name!r} holds {e.size} bytes, not {count} x {dtype.itemsize} for shape {e.shape}")
    f.seek(e.offset)
    buf = bytearray(e.size)
    if f.readinto(buf) != e.size:
        raise ValueError(f"{f.name}: {name!r} runs past the end of the file (truncated?)")
    arr = np.frombuffer(buf, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(e.shape)
    if e.dtype == _BFLOAT16:  # bfloat16 is the top half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr
