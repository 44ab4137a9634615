//! Regression test: forged handshake initiations answered with a cookie reply under load
//! must not count as an authenticated handshake.
//!
//! An attacker who knows only the device's and a peer's public keys can build an initiation
//! that passes MAC1 and `parse_handshake_anon` (the peer's static key correctly encrypted
//! under DH(attacker ephemeral, device static)) but whose timestamp is garbage. boringtun's
//! per-peer rate limiter (10 handshakes a second) answers the 11th and later ones with a
//! cookie reply before authenticating them; that reply must not move the peer's endpoint,
//! record a handshake or count received bytes. The forging is a port of
//! `wgdp/fuzz/make_seeds.py`'s `handshake_init(..., forge=True)`.

use std::net::SocketAddr;
use std::sync::Arc;

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::consts::U16;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use defguard_boringtun::x25519::{PublicKey, StaticSecret};

use crate::device::{Core, Peer};
use crate::fuzzing::{device_with_session, peer_addr, DEVICE_KEY, PEER_KEY};
use crate::stats::DropReason;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
/// WireGuard message type of a cookie reply.
const COOKIE_REPLY: u8 = 3;

/// Where the attacker sends from.
fn attacker_addr() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 66], 4444))
}

/// BLAKE2s-256 of the concatenated `parts`.
fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// HMAC-BLAKE2s of the concatenated `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = hmac::SimpleHmac::<Blake2s256>::new_from_slice(key).expect("any key length");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// The Noise KDF with two outputs.
fn kdf2(key: &[u8], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1, &[2]]);
    (t1, t2)
}

/// ChaCha20-Poly1305 with a zero nonce.
fn seal(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    cipher
        .encrypt(&[0u8; 12].into(), Payload { msg: plain, aad })
        .expect("sealing never fails")
}

/// A handshake initiation from the peer `peer_public` to the device `device_public`, made
/// without the peer's private key: ephemeral `ephemeral`, the peer's static key correctly
/// encrypted (the device identifies the sender), a timestamp sealed with a wrong key, and a
/// valid MAC1 (MAC2 zero).
fn forged_initiation(
    device_public: &PublicKey,
    peer_public: &PublicKey,
    ephemeral: [u8; 32],
    sender: u32,
) -> Vec<u8> {
    let s_r = device_public.as_bytes();
    let e_i = StaticSecret::from(ephemeral);
    let e_pub = PublicKey::from(&e_i);
    let mut c = hash(&[CONSTRUCTION]);
    let mut h = hash(&[&hash(&[&c, IDENTIFIER]), s_r]);
    c = hmac(&hmac(&c, &[e_pub.as_bytes()]), &[&[1]]);
    h = hash(&[&h, e_pub.as_bytes()]);
    let (_c, k) = kdf2(&c, e_i.diffie_hellman(device_public).as_bytes());
    let enc_static = seal(&k, peer_public.as_bytes(), &h);
    h = hash(&[&h, &enc_static]);
    // The next key needs DH(peer static, device static): the attacker does not have it.
    let mut timestamp = [0u8; 12];
    timestamp[..8].copy_from_slice(&((1u64 << 62) + 10 + 4_102_444_800).to_be_bytes());
    let enc_time = seal(&[0u8; 32], &timestamp, &h);
    let mut msg = Vec::with_capacity(148);
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&sender.to_le_bytes());
    msg.extend_from_slice(e_pub.as_bytes());
    msg.extend_from_slice(&enc_static);
    msg.extend_from_slice(&enc_time);
    let mac1_key = hash(&[LABEL_MAC1, s_r]);
    let mut mac = Blake2sMac::<U16>::new_from_slice(&mac1_key).expect("32-byte key");
    Update::update(&mut mac, &msg);
    let mac1: [u8; 16] = mac.finalize_fixed().into();
    msg.extend_from_slice(&mac1);
    msg.extend_from_slice(&[0u8; 16]);
    assert_eq!(msg.len(), 148);
    msg
}

fn the_peer(core: &Core) -> Arc<Peer> {
    let st = core.read();
    st.peers.values().next().cloned().expect("one peer")
}

#[test]
fn forged_initiations_under_load_do_not_move_the_endpoint() {
    let (core, mut rx, _remote) = device_with_session();
    let peer = the_peer(&core);
    let device_public = PublicKey::from(&StaticSecret::from(DEVICE_KEY));
    let peer_public = PublicKey::from(&StaticSecret::from(PEER_KEY));

    let handshake = peer.read(|t| &t.last_handshake);
    let rx_bytes = peer.read(|t| &t.rx_bytes);
    let last_rx = peer.read(|t| &t.last_rx);
    assert_ne!(handshake, 0, "the setup handshake did not complete");
    assert_eq!(peer.endpoint(), Some(peer_addr()));

    let under_load = core.stats.get(DropReason::UnderLoad);
    let mut cookie_replies = 0usize;
    for i in 0..30u32 {
        // A fresh ephemeral for every message.
        let ephemeral = hash(&[b"forged ephemeral", &i.to_le_bytes()]);
        let msg = forged_initiation(&device_public, &peer_public, ephemeral, 0x0A0B_0C00 + i);
        let st = core.read();
        rx.handle_datagram(&core, &st, attacker_addr(), &msg);
        drop(st);
        for (to, d) in rx.outbox.datagrams() {
            assert_eq!(to, attacker_addr(), "a reply went elsewhere");
            assert_eq!(
                d.first(),
                Some(&COOKIE_REPLY),
                "a forged initiation got a reply"
            );
            cookie_replies += 1;
        }
        rx.flush(&core, None, None);
    }

    // The rate-limited path was really exercised (else this test proves nothing).
    assert!(
        cookie_replies > 0,
        "no cookie reply: the limiter never kicked in"
    );
    assert_eq!(peer.endpoint(), Some(peer_addr()), "the endpoint moved");
    assert_eq!(
        peer.read(|t| &t.last_handshake),
        handshake,
        "a handshake was recorded"
    );
    assert_eq!(peer.read(|t| &t.rx_bytes), rx_bytes, "rx counted");
    assert_eq!(peer.read(|t| &t.last_rx), last_rx, "last_rx moved");
    // And they were counted as dropped under load.
    assert!(core.stats.get(DropReason::UnderLoad) > under_load);
}
