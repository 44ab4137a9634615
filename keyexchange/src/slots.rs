//! Two key slots per node, for key rotation without loss (make-before-break).
//!
//! Every node runs two WireGuard devices, slot 0 and slot 1, each with its own key and port;
//! slot `s` of a node peers only with slot `s` of the others, so each slot is a complete mesh
//! and a node accepts traffic from a peer on either. Which slot carries the traffic between
//! two nodes is a pure function of their two records ([`pair_slot`]), so both ends agree
//! without talking: slot 0, unless one of them is draining it for a key change. Pure: no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::NodeRecord;

/// One of a node's two key slots: slot 0 (the record's main key) or slot 1 (its second key).
/// Serialised as the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Slot(u8);

impl Slot {
    /// Slot 0: the record's main key and port.
    pub const FIRST: Slot = Slot(0);
    /// Slot 1: the record's second key and port.
    pub const SECOND: Slot = Slot(1);

    /// The slot numbered `n` (0 or 1).
    pub fn new(n: u8) -> Option<Slot> {
        (n < 2).then_some(Slot(n))
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        Slot(1 - self.0)
    }

    /// The slot's position in a per-slot array.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl From<Slot> for u8 {
    fn from(slot: Slot) -> u8 {
        slot.0
    }
}

impl TryFrom<u8> for Slot {
    type Error = String;

    fn try_from(n: u8) -> Result<Slot, String> {
        Slot::new(n).ok_or_else(|| format!("no key slot {n} (0 or 1)"))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Both slots, in order.
pub const SLOTS: [Slot; 2] = [Slot::FIRST, Slot::SECOND];

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
        return Slot::FIRST;
    }
    let drain = match (a.draining(), b.draining()) {
        (None, None) => return Slot::FIRST,
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
    drain.other()
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

    const S0: Slot = Slot::FIRST;
    const S1: Slot = Slot::SECOND;

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
                    draining: Some(d.into()),
                    replaced: false,
                }),
            },
        }
    }

    #[test]
    fn both_ends_agree_and_a_drained_slot_is_never_used() {
        let cases = [
            (None, None, S0),
            (Some(S0), None, S1),
            (None, Some(S0), S1),
            (Some(S1), None, S0),
            (Some(S0), Some(S0), S1),
            (Some(S1), Some(S1), S0),
            // Different drains: "a" sorts first, its drain wins.
            (Some(S0), Some(S1), S1),
            (Some(S1), Some(S0), S0),
        ];
        for (da, db, want) in cases {
            let (a, b) = (rec("a", true, da), rec("b", true, db));
            assert_eq!(pair_slot(&a, &b), want, "{da:?} {db:?}");
            assert_eq!(pair_slot(&b, &a), want, "symmetric {da:?} {db:?}");
        }
    }

    #[test]
    fn a_node_without_a_second_slot_pins_slot_zero() {
        let a = rec("a", true, Some(S0));
        let old = rec("b", false, None);
        assert_eq!(pair_slot(&a, &old), S0);
        assert!(slot_view(&old, S1).is_none());
        let view = slot_view(&a, S1).unwrap();
        assert_eq!(view.public_key, PublicKey::from_bytes([9; 32]));
        assert_eq!(view.listen_port, 51821);
        assert_eq!(slot_view(&a, S0).unwrap(), a);
    }

    #[test]
    fn a_slot_is_zero_or_one_on_the_wire_too() {
        assert_eq!(Slot::new(2), None);
        assert_eq!(S0.other(), S1);
        assert_eq!(serde_json::to_string(&S1).unwrap(), "1");
        assert_eq!(serde_json::from_str::<Slot>("0").unwrap(), S0);
        assert!(serde_json::from_str::<Slot>("2").is_err());
    }

    #[test]
    fn the_later_name_yields_on_opposite_drains() {
        let (a, b) = (rec("a", true, Some(S0)), rec("b", true, Some(S1)));
        assert!(yields_to(&b, S1, &a));
        assert!(!yields_to(&a, S0, &b));
        // Same slot drained by both: nobody yields (both keep off slot 0).
        let c = rec("c", true, Some(S0));
        assert!(!yields_to(&c, S0, &a));
    }
}
