//! Two key slots per node, for key rotation without loss (make-before-break).
//!
//! Every node runs two WireGuard devices, slot 0 and slot 1, each with its own key and port;
//! slot `s` of a node peers only with slot `s` of the others, so each slot is a complete mesh
//! and a node accepts traffic from a peer on either. Which slot carries the traffic between
//! two nodes is a pure function of their two records ([`pair_slot`]), so both ends agree
//! without talking: slot 0, unless one of them is draining it for a key change. Pure: no I/O.

use crate::record::NodeRecord;

/// Slot 0 or slot 1.
pub type Slot = u8;

/// Both slots, in order.
pub const SLOTS: [Slot; 2] = [0, 1];

/// The record as its `slot` device presents itself (that slot's key and port), or `None` when
/// the node has no such slot.
pub fn slot_view(record: &NodeRecord, slot: Slot) -> Option<NodeRecord> {
    let key = record.slot(slot)?;
    let mut view = record.clone();
    view.public_key = key.public_key;
    view.listen_port = key.listen_port;
    Some(view)
}

/// The slot traffic between `a` and `b` uses: slot 0 unless one of them drains it; if both
/// drain different slots at once, the drain of the node whose name sorts first wins (the
/// other node's rotation waits, see [`yields_to`]). A node without a second slot always uses
/// slot 0.
pub fn pair_slot(a: &NodeRecord, b: &NodeRecord) -> Slot {
    if a.rotation.second.is_none() || b.rotation.second.is_none() {
        return 0;
    }
    let drain = match (a.draining(), b.draining()) {
        (None, None) => return 0,
        (Some(s), None) | (None, Some(s)) => s,
        (Some(x), Some(y)) if x == y => x,
        (Some(x), Some(y)) => {
            if a.name < b.name {
                x
            } else {
                y
            }
        }
    };
    1 - drain.min(1)
}

/// Whether `me`, draining `slot`, must give way to `other`: `other` drains the other slot and
/// its name sorts first, so pairs with it keep using `slot`.
pub fn yields_to(me: &NodeRecord, slot: Slot, other: &NodeRecord) -> bool {
    matches!(other.draining(), Some(s) if s != slot) && other.name < me.name
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::record::{Rotation, RotationStep, SlotKey};
    use crate::PublicKey;

    fn rec(name: &str, second: bool, draining: Option<Slot>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_key: PublicKey::from_bytes([name.len() as u8; 32]),
            listen_port: 51820,
            endpoints: vec!["198.18.0.1".parse().unwrap()],
            pod_cidrs: vec![],
            rotation: Rotation {
                second: second.then_some(SlotKey {
                    public_key: PublicKey::from_bytes([9; 32]),
                    listen_port: 51821,
                }),
                step: draining.map(|d| RotationStep {
                    serial: 7,
                    draining: Some(d),
                    replaced: false,
                }),
                acks: Default::default(),
            },
        }
    }

    #[test]
    fn both_ends_agree_and_a_drained_slot_is_never_used() {
        let cases = [
            (None, None, 0),
            (Some(0), None, 1),
            (None, Some(0), 1),
            (Some(1), None, 0),
            (Some(0), Some(0), 1),
            (Some(1), Some(1), 0),
            // Different drains: "a" sorts first, its drain wins.
            (Some(0), Some(1), 1),
            (Some(1), Some(0), 0),
        ];
        for (da, db, want) in cases {
            let (a, b) = (rec("a", true, da), rec("b", true, db));
            assert_eq!(pair_slot(&a, &b), want, "{da:?} {db:?}");
            assert_eq!(pair_slot(&b, &a), want, "symmetric {da:?} {db:?}");
        }
    }

    #[test]
    fn a_node_without_a_second_slot_pins_slot_zero() {
        let a = rec("a", true, Some(0));
        let old = rec("b", false, None);
        assert_eq!(pair_slot(&a, &old), 0);
        assert!(slot_view(&old, 1).is_none());
        let view = slot_view(&a, 1).unwrap();
        assert_eq!(view.public_key, PublicKey::from_bytes([9; 32]));
        assert_eq!(view.listen_port, 51821);
        assert_eq!(slot_view(&a, 0).unwrap(), a);
    }

    #[test]
    fn the_later_name_yields_on_opposite_drains() {
        let (a, b) = (rec("a", true, Some(0)), rec("b", true, Some(1)));
        assert!(yields_to(&b, 1, &a));
        assert!(!yields_to(&a, 0, &b));
        // Same slot drained by both: nobody yields (both keep off slot 0).
        let c = rec("c", true, Some(0));
        assert!(!yields_to(&c, 0, &a));
    }
}
