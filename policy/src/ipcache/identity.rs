//! A remote pod's identity as one shared allocation: its namespace, labels and named ports.
//!
//! The table interns some 50,000 of these at 5,000 nodes in the scale harness (each node's pods
//! are labelled with their node), so an identity's bytes count: one reference-counted slice of
//! shared names, 64 bytes for a namespace and two labels, where a boxed struct holding a
//! separately shared label set took 104 in two allocations.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::intern::{LabelsView, Name};
use crate::model::{NamedPort, Pod, Protocol};

/// What policy reads of a remote pod: namespace, labels and named ports.
///
/// One slice of shared [`Name`]s: the namespace, the labels (`key=value`, in key order), then,
/// if the pod names container ports, an empty name and one `name=protocol/number` name per
/// port in name order (a label is never empty, so the empty name ends the labels). Cheap to
/// clone (a reference count); compared, ordered and hashed by content.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(Arc<[Name]>);

impl Default for Identity {
    /// The empty namespace, no label, no named port.
    fn default() -> Self {
        Identity(Arc::from([Name::default()]))
    }
}

impl Identity {
    /// The identity of a pod of `namespace` labelled `labels` naming `named_ports`.
    pub fn new(
        namespace: Name,
        labels: LabelsView<'_>,
        named_ports: &BTreeMap<String, NamedPort>,
    ) -> Self {
        let ports = if named_ports.is_empty() {
            0
        } else {
            1 + named_ports.len()
        };
        let mut parts = Vec::with_capacity(1 + labels.len() + ports);
        parts.push(namespace);
        parts.extend(labels.names().iter().cloned());
        if ports > 0 {
            parts.push(Name::default());
            parts.extend(named_ports.iter().map(|(name, port)| {
                Name::from(format!("{name}={}/{}", port.protocol.number(), port.number))
            }));
        }
        Identity(Arc::from(parts))
    }

    /// The identity of `pod`.
    pub fn of(pod: &Pod) -> Self {
        Self::new(
            pod.key.namespace.clone(),
            pod.labels.view(),
            &pod.named_ports,
        )
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &Name {
        // Every identity holds its namespace first (`new`, `default`).
        &self.0[0]
    }

    /// The pod's labels.
    pub fn labels(&self) -> LabelsView<'_> {
        LabelsView::of(&self.0[1..1 + self.label_count()])
    }

    /// The named container port `name`, if the pod has it.
    pub fn named_port(&self, name: &str) -> Option<NamedPort> {
        let ports = self.port_names();
        let i = ports
            .binary_search_by(|port| port_name(port).cmp(name))
            .ok()?;
        decode_port(&ports[i]).map(|(_, port)| port)
    }

    /// The named container ports, in name order.
    pub fn named_ports(&self) -> impl Iterator<Item = (&str, NamedPort)> + '_ {
        self.port_names()
            .iter()
            .filter_map(|port| decode_port(port))
    }

    /// Whether two identities are the same copy (not just equal).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn label_count(&self) -> usize {
        let rest = &self.0[1..];
        rest.iter()
            .position(|name| name.is_empty())
            .unwrap_or(rest.len())
    }

    fn port_names(&self) -> &[Name] {
        self.0.get(2 + self.label_count()..).unwrap_or_default()
    }
}

/// The name of an encoded named port (`name=protocol/number`).
fn port_name(port: &str) -> &str {
    port.split_once('=').map_or(port, |(name, _)| name)
}

/// A named port as [`Identity::new`] encoded it.
fn decode_port(port: &str) -> Option<(&str, NamedPort)> {
    let (name, rest) = port.split_once('=')?;
    let (protocol, number) = rest.split_once('/')?;
    let protocol = Protocol::from_number(protocol.parse().ok()?)?;
    Some((
        name,
        NamedPort {
            protocol,
            number: number.parse().ok()?,
        },
    ))
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("namespace", self.namespace())
            .field("labels", &self.labels())
            .field(
                "named_ports",
                &self.named_ports().collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intern::LabelSet;
    use crate::model::Labels;

    #[test]
    fn an_identity_reads_back_its_namespace_labels_and_named_ports() {
        let labels = LabelSet::from(Labels::from([
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]));
        let ports = BTreeMap::from([
            (
                "http".to_owned(),
                NamedPort {
                    protocol: Protocol::Tcp,
                    number: 80,
                },
            ),
            (
                "dns".to_owned(),
                NamedPort {
                    protocol: Protocol::Udp,
                    number: 53,
                },
            ),
        ]);
        let identity = Identity::new("x".into(), labels.view(), &ports);
        assert_eq!(identity.namespace(), "x");
        assert_eq!(identity.labels(), labels.view());
        assert_eq!(identity.labels().get("tier"), Some("front"));
        assert_eq!(identity.named_port("http"), Some(ports["http"]));
        assert_eq!(identity.named_port("dns"), Some(ports["dns"]));
        assert_eq!(identity.named_port("ssh"), None);
        let read: BTreeMap<String, NamedPort> = identity
            .named_ports()
            .map(|(name, port)| (name.to_owned(), port))
            .collect();
        assert_eq!(read, ports);

        let bare = Identity::new("x".into(), labels.view(), &BTreeMap::new());
        assert_ne!(bare, identity, "named ports are part of the identity");
        assert_eq!(bare.labels(), labels.view());
        assert_eq!(bare.named_ports().count(), 0);
        assert_eq!(bare.named_port("http"), None);

        let empty = Identity::default();
        assert_eq!(empty.namespace(), "");
        assert!(empty.labels().is_empty());
        assert_eq!(empty.named_ports().count(), 0);
    }
}
