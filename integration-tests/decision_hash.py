"""An independent reading of Weir's decision record (proto/weir/tail/v1/decision_record.md):
the header, dense and sparse payloads, and hash scheme 1's bit positions (SipHash-1-3 and double
hashing), written from the format document alone so that the black-box tests never check the
gateway's filters with the gateway's own code."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MASK64 = (1 << 64) - 1
DERIVED_HASH_PRIME = 2**64 - 59


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def siphash13(k0: int, k1: int, message: bytes) -> int:
    """SipHash-1-3 (one compression round, three finalization rounds) of `message`."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rnd():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & MASK64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & MASK64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & MASK64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & MASK64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    full = len(message) - len(message) % 8
    words = [int.from_bytes(message[i : i + 8], "little") for i in range(0, full, 8)]
    last = ((len(message) & 0xFF) << 56) | int.from_bytes(message[full:], "little")
    for m in words + [last]:
        v3 ^= m
        rnd()
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        rnd()
    return v0 ^ v1 ^ v2 ^ v3


def positions(seed: bytes, hashes: int, bit_count: int, trace_id: bytes) -> list[int]:
    """Hash scheme 1: the bit positions of `trace_id`, in hash order."""
    assert len(seed) == 32 and len(trace_id) == 16
    keys = [int.from_bytes(seed[i : i + 8], "little") for i in (0, 8, 16, 24)]
    message = (16).to_bytes(8, "little") + trace_id
    h0 = siphash13(keys[0], keys[1], message)
    h1 = siphash13(keys[2], keys[3], message)
    out = []
    for i in range(hashes):
        g = h0 if i == 0 else h1 if i == 1 else ((h0 + i * h1) & MASK64) % DERIVED_HASH_PRIME
        out.append(g % bit_count)
    return out


def expand_seed(seed: int) -> bytes:
    """The policy's `seed` as the 32-byte filter seed: four SplitMix64 outputs, big-endian."""
    state = seed
    out = b""
    for _ in range(4):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out += (z ^ (z >> 31)).to_bytes(8, "big")
    return out


@dataclass
class DecisionRecord:
    version: int
    sealed: bool
    sparse: bool
    hash_scheme: int
    hashes: int
    window_start: int
    window_length: int
    filter_bytes: int
    expected_items: int
    segment_offset: int
    seed: bytes
    gateway_id: str
    payload: bytes

    def filter_key(self) -> tuple:
        return (self.window_start, self.window_length, self.filter_bytes, self.hashes, self.seed, self.hash_scheme)

    def set_bits(self) -> list[int]:
        """The bit positions the payload sets."""
        if not self.sparse:
            base = self.segment_offset * 8
            return [base + i * 8 + b for i, byte in enumerate(self.payload) for b in range(8) if byte >> b & 1]
        out, nxt, gap, shift = [], self.segment_offset * 8, 0, 0
        for byte in self.payload:
            gap |= (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80 == 0:
                out.append(nxt + gap)
                nxt += gap + 1
                gap, shift = 0, 0
        assert shift == 0, "a sparse payload ends inside a varint"
        return out


def parse(value: bytes) -> DecisionRecord:
    assert value[:4] == b"WTDR", "bad magic"
    version, header_len, flags, scheme, id_len, hashes = struct.unpack_from(">HHBBHI", value, 4)
    start, length, fbytes, expected, _estimate, _baseline, _seq, offset = struct.unpack_from(">8Q", value, 16)
    (payload_len,) = struct.unpack_from(">I", value, 80)
    seed = value[84:116]
    gateway_id = value[116 : 116 + id_len].decode()
    payload = value[header_len:]
    assert len(payload) == payload_len, (len(payload), payload_len)
    return DecisionRecord(
        version, bool(flags & 1), bool(flags & 2), scheme, hashes, start, length, fbytes, expected, offset, seed, gateway_id, payload
    )


def merged_filters(records: list[DecisionRecord]) -> dict[tuple, set[int]]:
    """Every window's filter, ORed over all records: filter key -> set bit positions."""
    out: dict[tuple, set[int]] = {}
    for r in records:
        out.setdefault(r.filter_key(), set()).update(r.set_bits())
    return out


def marked(filters: dict[tuple, set[int]], trace_id: bytes) -> bool:
    """True when some window's merged filter holds `trace_id`."""
    for (_start, _length, fbytes, hashes, seed, _scheme), bits in filters.items():
        if all(p in bits for p in positions(seed, hashes, fbytes * 8, trace_id)):
            return True
    return False


def bitmap_bytes(n: int, p: float) -> int:
    """The filter size in bytes for `n` items at false-positive rate `p` (the format document)."""
    import math

    return max(1, math.ceil(n * math.log(p) / (-8 * math.log(2) ** 2)))


def hash_count(bits: int, n: int) -> int:
    import math

    return max(1, round(bits / n * math.log(2)))


def encode(
    *,
    window_start: int,
    window_length: int,
    filter_bytes: int,
    hashes: int,
    seed: bytes,
    expected_items: int,
    set_positions: list[int],
    gateway_id: str = "python",
    sealed: bool = False,
) -> bytes:
    """A version-2 record with a sparse payload setting `set_positions` (increasing)."""
    payload = bytearray()
    nxt = 0
    for p in set_positions:
        gap = p - nxt
        while gap >= 0x80:
            payload.append(gap & 0x7F | 0x80)
            gap >>= 7
        payload.append(gap)
        nxt = p + 1
    gid = gateway_id.encode()
    header = b"WTDR" + struct.pack(">HHBBHI", 2, 116 + len(gid), 2 | int(sealed), 1, len(gid), hashes)
    header += struct.pack(">8Q", window_start, window_length, filter_bytes, expected_items, 0, 2**64 - 1, 1, 0)
    header += struct.pack(">I", len(payload)) + seed + gid
    return header + bytes(payload)
