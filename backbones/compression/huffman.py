"""Canonical Huffman coding of small-alphabet integer streams (Deep Compression stage 3).

Han et al., "Deep Compression", arXiv:1510.00149, section 4: the quantised weight indices and the sparse-position
index differences are each Huffman-coded, since their distributions are far from uniform. A canonical code is
fully described by each symbol's code length, so a stream is stored as ``lengths`` (one byte per symbol of the
alphabet) plus the packed bits; :func:`decode` rebuilds the code from the lengths alone.
"""

from __future__ import annotations

import heapq

import numpy as np

#: code lengths are stored as one byte each
MAX_CODE_LENGTH = 255


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol ``0..len(counts)-1`` (0 for symbols that never occur).

    A stream of a single distinct symbol gets length 1 for it (a code needs at least one bit per symbol).
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    # heap of (count, tie-breaker, symbols under this node); merging adds one bit to every symbol below
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, t1, s1 = heapq.heappop(heap)
        c2, t2, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), s1 + s2))
    if lengths.max(initial=0) > MAX_CODE_LENGTH:
        raise ValueError(f"a Huffman code length exceeds {MAX_CODE_LENGTH} bits; the stream is too skewed to store")
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol from its length: symbols sorted by (length, value) get consecutive codes."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, bytes, int]:
    """Huffman-code ``symbols`` (integers in ``[0, alphabet)``).

    Returns:
        ``(lengths, packed bits, number of bits)``: ``lengths`` is uint8 of size ``alphabet``.
    """
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet}); got {symbols.min()}..{symbols.max()}")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    if lengths.max(initial=0) > 62:  # the vectorised bit extraction below works on int64 codes
        raise ValueError("a Huffman code is longer than 62 bits; the stream is too skewed to encode")
    codes = canonical_codes(lengths)
    sym_len, sym_code = lengths[symbols], codes[symbols]
    total = int(sym_len.sum())
    starts = np.cumsum(sym_len) - sym_len
    owner = np.repeat(np.arange(len(symbols)), sym_len)  # which symbol each output bit belongs to
    offset = np.arange(total) - starts[owner]  # bit index inside that symbol's code, most significant first
    bits = (sym_code[owner] >> (sym_len[owner] - 1 - offset)) & 1
    return lengths.astype(np.uint8), np.packbits(bits.astype(np.uint8)).tobytes(), total


def decode(lengths: np.ndarray, data: bytes, num_bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``count`` symbols from the first ``num_bits`` bits of ``data``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(lengths.max())
    if width == 0:
        raise ValueError("the code has no symbols but the stream holds some")
    codes = canonical_codes(lengths)
    # table over every `width`-bit window: the symbol whose code prefixes it and that code's length
    table_sym = np.zeros(1 << width, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero(lengths):
        shift = width - int(lengths[s])
        lo = int(codes[s]) << shift
        table_sym[lo : lo + (1 << shift)] = s
        table_len[lo : lo + (1 << shift)] = lengths[s]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:num_bits].astype(np.int64)
    padded = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    # the width-bit window starting at every bit position, as an integer
    windows = np.zeros(num_bits, dtype=np.int64)
    for j in range(width):
        windows = (windows << 1) | padded[j : j + num_bits]
    out = np.empty(count, dtype=np.int64)
    sym_at, len_at = table_sym[windows].tolist(), table_len[windows].tolist()
    pos = 0
    for i in range(count):  # each symbol's start depends on the previous one's length: a sequential walk
        if pos >= num_bits:
            raise ValueError(f"the bit stream ends after {i} of {count} symbols")
        out[i] = sym_at[pos]
        pos += len_at[pos]
    if pos != num_bits:
        raise ValueError(f"decoded {count} symbols from {pos} bits but the stream holds {num_bits}")
    return out
