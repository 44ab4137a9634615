#!/usr/bin/env python3
"""Writes a small seed corpus for the fuzz targets into seeds/<target>/ (see FUZZING.md).

Packets are built without valid checksums: the targets' repair mode fixes them."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def ipv4(proto, l4, df=True, ident=0x1234):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000 if df else 0, 64, proto, 0,
                    bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return h + l4


def ipv6(proto, l4):
    h = struct.pack("!IHBB16s16s", 6 << 28 | 0x12345, len(l4), proto, 64,
                    bytes([0xfd] + [0] * 14 + [1]), bytes([0xfd] + [0] * 14 + [2]))
    return h + l4


def tcp(payload, flags=0x10, ts=True, seq=1000):
    opts = bytes([1, 1, 8, 10]) + struct.pack("!II", 1, 2) if ts else b""
    doff = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, doff << 4, flags, 502, 0, 0) + opts + payload


def udp(payload):
    return struct.pack("!HHHH", 4433, 53, 8 + len(payload), 0) + payload


def vnet(flags, gso, hdr_len, gso_size, start, off):
    return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, off)


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


payload = bytes((i * 31 + 7) & 0xff for i in range(350))
# segment: mode 3 (repair lengths, valid gso_type), header, packet.
write("segment", "tso4", b"\x03" + vnet(1, 1, 0, 100, 20, 16) + ipv4(6, tcp(payload, 0x98)))
write("segment", "tso6", b"\x03" + vnet(1, 4, 0, 100, 40, 16) + ipv6(6, tcp(payload, 0x19)))
write("segment", "uso4", b"\x03" + vnet(1, 5, 28, 100, 20, 6) + ipv4(17, udp(payload)))
write("segment", "uso6", b"\x03" + vnet(1, 5, 48, 100, 40, 6) + ipv6(17, udp(payload)))
write("segment", "csum", b"\x01" + vnet(1, 0, 0, 0, 20, 16) + ipv4(6, tcp(payload[:50])))


def raw(pkt):
    return b"\x00" + struct.pack("<H", len(pkt)) + pkt


def nxt(length, flags=0x10):
    return b"\x01" + struct.pack("<H", length) + bytes([flags]) + b"abcdefgh"


for name, first in [("tcp4", ipv4(6, tcp(payload[:100]))), ("tcp6", ipv6(6, tcp(payload[:100], ts=False))),
                    ("tcp4_nodf", ipv4(6, tcp(payload[:100]), df=False))]:
    ops = raw(first) + nxt(100) * 5 + nxt(60, 0x18) + nxt(100) * 3 + b"\x02\x01" + nxt(100)
    ops += b"\x03" + struct.pack("<H", 30) + b"\x01" + nxt(100) * 2
    write("coalesce", name, b"\x03" + ops)
for name, first in [("udp4", ipv4(17, udp(payload[:120]))), ("udp6", ipv6(17, udp(payload[:120])))]:
    write("coalesce", name, b"\x03" + raw(first) + b"\x02\x00" * 8 + raw(first[:-20]) + b"\x02\x01" * 3)
