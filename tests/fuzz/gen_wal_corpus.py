#!/usr/bin/env python3
# gen_wal_corpus.py - writes the seed corpus of fuzz_wal (valid, torn, damaged and split logs).
import os
import struct
import sys

def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

def frame(payload, t=1700000000000000000):
    body = struct.pack("<IQ", len(payload), t)
    c = crc32c(body[:4] + body[4:] + payload)
    return struct.pack("<III", 0x314C574B, len(payload), c) + struct.pack("<Q", t) + payload

def main(out):
    os.makedirs(out, exist_ok=True)
    recs = [frame(bytes([i]) * (i * 13 % 90)) for i in range(8)]
    log = b"".join(recs)
    seeds = {
        "valid": b"\x00\x00" + log,
        "torn_tail": b"\x00\x00" + log[:-7] + recs[0][:9],
        "corrupt_middle": b"\x00\x00" + log[:50] + bytes([log[50] ^ 0xFF]) + log[51:],
        "two_segments": b"\x02\x80" + log,
        "gap_committed": b"\x35\x60" + struct.pack("<Q", len(recs[0]) + len(recs[1])) + log,
        "garbage": b"\x08\x00" + bytes(range(256))[::7] * 3,
        "empty": b"\x00\x00",
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "wal"))
