#!/usr/bin/env python3
"""Writes a small seed corpus for the fuzz targets into seeds/<target>/ (see ../FUZZING.md).

Every seed starts with the target's mode byte (see the fuzz_targets/*.rs docs).

udp_input: handshake initiations built here from the WireGuard paper's description of the
Noise_IKpsk2 initiation (needs python3-cryptography for X25519 and ChaCha20-Poly1305) with
the harness's keys (wgdp::fuzzing::DEVICE_KEY, PEER_KEY):
* `init_valid`: a complete, valid initiation from the peer, with a TAI64N timestamp in
  2100 so that it is newer than any the harness saw: accepted the first time it is run;
* `init_forged`: the peer's static key correctly encrypted (so the device identifies the
  sender) but a timestamp sealed with a wrong key, and a valid MAC1: gets as far as
  boringtun's timestamp check;
plus shapes of the other messages (addressed to the harness's session by mode bit 0) and
truncated or oversized ones.

tun_input: virtio-net header + IPv4/IPv6 packets to the peer's allowed IPs (10.0.0.0/8,
fd00::/8): plain packets, TSO/USO super-packets, and unroutable or broken ones.
"""
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- udp_input

DEVICE_KEY = bytes([0x11] * 32)
PEER_KEY = bytes([0x22] * 32)
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"


def h(*parts):
    return hashlib.blake2s(b"".join(parts)).digest()


def hm(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf2(key, data):
    t0 = hm(key, data)
    t1 = hm(t0, b"\x01")
    return t1, hm(t0, t1 + b"\x02")


def handshake_init(timestamp, forge=False, sender=0x0A0B0C):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def pub(k):
        return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def dh(priv, pub_bytes):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        return priv.exchange(X25519PublicKey.from_public_bytes(pub_bytes))

    def seal(key, plain, ad):
        return ChaCha20Poly1305(key).encrypt(b"\x00" * 12, plain, ad)

    s_i = X25519PrivateKey.from_private_bytes(PEER_KEY)
    s_r_pub = pub(X25519PrivateKey.from_private_bytes(DEVICE_KEY))
    e_i = X25519PrivateKey.from_private_bytes(bytes([0x33] * 32))
    c = h(CONSTRUCTION)
    hh = h(h(c, IDENTIFIER), s_r_pub)
    e_pub = pub(e_i)
    c = hm(hm(c, e_pub), b"\x01")  # KDF1
    hh = h(hh, e_pub)
    c, k = kdf2(c, dh(e_i, s_r_pub))
    enc_static = seal(k, pub(s_i), hh)
    hh = h(hh, enc_static)
    c, k = kdf2(c, dh(s_i, s_r_pub))
    if forge:
        k = bytes(32)
    enc_time = seal(k, timestamp, hh)
    msg = struct.pack("<II", 1, sender) + e_pub + enc_static + enc_time
    mac1 = hashlib.blake2s(msg, key=h(LABEL_MAC1, s_r_pub), digest_size=16).digest()
    return msg + mac1 + bytes(16)


def tai64n(unix_seconds, nanos=0):
    return struct.pack(">QI", (1 << 62) + 10 + unix_seconds, nanos)


RAW, RESP, COOKIE, DATA, FIT, ADDR = 0x00, 0x02, 0x04, 0x06, 0x08, 0x01
pat = bytes((i * 37 + 11) & 0xFF for i in range(2000))

try:
    init = handshake_init(tai64n(4102444800))  # 2100-01-01
    write("udp_input", "init_valid", bytes([RAW]) + init)
    write("udp_input", "init_forged", bytes([RAW]) + handshake_init(tai64n(4102444800), forge=True))
    write("udp_input", "init_truncated", bytes([RAW]) + init[:147])
    write("udp_input", "init_long", bytes([RAW]) + init + b"\x00")
    write("udp_input", "init_bad_mac1", bytes([RAW]) + init[:120] + bytes([init[120] ^ 1]) + init[121:])
except ImportError:
    print("python3-cryptography missing: no handshake initiation seeds")

write("udp_input", "empty", bytes([RAW]))
write("udp_input", "type_only", bytes([RAW]) + b"\x04\x00\x00\x00")
write("udp_input", "bad_type", bytes([RAW]) + b"\x05\x00\x00\x00" + pat[:60])
write("udp_input", "reserved_set", bytes([RAW]) + b"\x04\x00\x01\x00" + pat[:60])
# Handshake response: type, sender, receiver (session 1), ephemeral, empty AEAD, MACs.
resp = struct.pack("<III", 2, 0x00C0FFEE, 1) + pat[:32] + pat[32:48] + pat[48:80]
write("udp_input", "response", bytes([RESP | FIT | ADDR]) + resp)
write("udp_input", "response_short", bytes([RAW]) + resp[:91])
# Cookie reply: type, receiver, 24-byte nonce, encrypted cookie + tag.
cookie = struct.pack("<II", 3, 1) + pat[:24] + pat[24:56]
write("udp_input", "cookie", bytes([COOKIE | FIT | ADDR]) + cookie)
# Data: type, receiver, counter, ciphertext + tag. Counter 0 was the remote's keepalive.
for name, counter, n in [("data_replay", 0, 0), ("data_keepalive", 1000, 0),
                         ("data_packet", 1001, 84), ("data_big", 1 << 40, 1400)]:
    data = struct.pack("<IIQ", 4, 1, counter) + pat[:n] + pat[100:116]
    write("udp_input", name, bytes([DATA | ADDR]) + data)
write("udp_input", "data_unknown_index", bytes([RAW]) + struct.pack("<IIQ", 4, 0x4242, 7) + pat[:16])
write("udp_input", "data_short", bytes([RAW]) + struct.pack("<IIQ", 4, 1, 7) + pat[:15])
write("udp_input", "data_wrong_session", bytes([DATA | ADDR]) + struct.pack("<IIQ", 4, 6, 7) + pat[:48])

# ---------------------------------------------------------------- tun_input

ROUTE, GSO, REPAIR = 0x01, 0x02, 0x04


def csum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4(proto, l4, dst=(10, 0, 0, 2), df=True, options=b""):
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(l4), 0x1234,
                      0x4000 if df else 0, 64, proto, 0, bytes([10, 0, 0, 1]), bytes(dst)) + options
    c = 0xFFFF ^ csum(hdr)
    return hdr[:10] + struct.pack("!H", c) + hdr[12:] + l4


def ipv6(proto, l4, dst=b"\xfd" + bytes(14) + b"\x02"):
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, b"\xfd" + bytes(14) + b"\x01", dst)
    return hdr + l4


def tcp(payload, flags=0x18, ts=True):
    opts = bytes([1, 1, 8, 10]) + struct.pack("!II", 1, 2) if ts else b""
    doff = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 77, doff << 4, flags, 502, 0, 0) + opts + payload


def udp(payload):
    return struct.pack("!HHHH", 4433, 53, 8 + len(payload), 0) + payload


def vnet(flags=0, gso=0, hdr_len=0, gso_size=0, start=0, off=0):
    return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, off)


payload = pat[:350]
write("tun_input", "v4_udp", bytes([0]) + vnet() + ipv4(17, udp(payload[:40])))
write("tun_input", "v4_icmp", bytes([0]) + vnet() + ipv4(1, b"\x08\x00\x00\x00\x00\x01\x00\x01" + payload[:32]))
write("tun_input", "v6_tcp", bytes([0]) + vnet() + ipv6(6, tcp(payload[:60])))
write("tun_input", "v4_csum", bytes([0]) + vnet(1, 0, 0, 0, 20, 16) + ipv4(6, tcp(payload[:50])))
write("tun_input", "v6_udp_csum", bytes([0]) + vnet(1, 0, 0, 0, 40, 6) + ipv6(17, udp(payload[:50])))
write("tun_input", "tso4", bytes([0]) + vnet(1, 1, 52, 100, 20, 16) + ipv4(6, tcp(payload)))
write("tun_input", "tso4_ecn", bytes([0]) + vnet(1, 0x81, 52, 100, 20, 16) + ipv4(6, tcp(payload, 0x98)))
write("tun_input", "tso4_options", bytes([0]) + vnet(1, 1, 56, 100, 24, 16)
      + ipv4(6, tcp(payload), options=b"\x01\x01\x01\x00"))
write("tun_input", "tso6", bytes([0]) + vnet(1, 4, 72, 100, 40, 16) + ipv6(6, tcp(payload)))
write("tun_input", "uso4", bytes([0]) + vnet(1, 5, 28, 100, 20, 6) + ipv4(17, udp(payload)))
write("tun_input", "uso6", bytes([0]) + vnet(1, 5, 48, 100, 40, 6) + ipv6(17, udp(payload)))
# Larger than one chunk of 8 segments sealed per lock hold: 1800 bytes in 120-byte segments.
write("tun_input", "tso4_many", bytes([0]) + vnet(1, 1, 52, 120, 20, 16) + ipv4(6, tcp(pat[:1800])))
write("tun_input", "no_route_v4", bytes([0]) + vnet() + ipv4(17, udp(payload[:20]), dst=(192, 0, 2, 9)))
write("tun_input", "no_route_v6", bytes([0]) + vnet() + ipv6(17, udp(payload[:20]), dst=b"\x20\x01" + bytes(13) + b"\x09"))
write("tun_input", "vnet_only", bytes([0]) + vnet())
write("tun_input", "vnet_short", bytes([0]) + vnet()[:5])
write("tun_input", "ip_short", bytes([0]) + vnet() + ipv4(17, udp(b""))[:19])
write("tun_input", "not_ip", bytes([0]) + vnet() + b"\x00" * 30)
# The same super-packet with broken lengths, fixed by the mode.
bad = bytearray(ipv4(6, tcp(payload)))
bad[2:4] = b"\x00\x28"
write("tun_input", "tso4_repair", bytes([ROUTE | GSO | REPAIR]) + vnet(1, 1, 52, 100, 20, 16) + bytes(bad))
bad6 = bytearray(ipv6(17, udp(payload)))
bad6[4:6] = b"\xff\xff"
write("tun_input", "uso6_repair", bytes([ROUTE | GSO | REPAIR]) + vnet(1, 5, 48, 100, 40, 6) + bytes(bad6))
