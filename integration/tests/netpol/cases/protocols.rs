//! Upstream's protocol cases: a policy port naming only a protocol, SCTP and UDP policies that
//! must not admit TCP, and the cases upstream repeats in its UDP and SCTP contexts.

use super::super::reachability::{any, ns, pod, Table};
use super::{apply, case, sctp, tcp, udp, Case, Check};

/// Everything allowed: the starting point of every table.
fn open() -> Table {
    Table::all(true)
}

/// should enforce ingress policy allowing any port traffic to a server on a specific protocol
pub fn ingress_any_port_on_protocol() -> Case {
    case(
        "ingress_any_port_on_protocol",
        "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
        vec![apply(
            "ingress-any-port-on-protocol.yaml",
            vec![
                udp(80, open().peer(any(), pod("x/a"), false)),
                tcp(80, open()),
                // Not in upstream: any port means the other port too.
                tcp(81, open()),
            ],
        )],
    )
}

/// should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't
/// support SCTP
pub fn sctp_not_tcp() -> Case {
    case(
        "sctp_not_tcp",
        "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
        vec![apply(
            "sctp-not-tcp.yaml",
            vec![
                tcp(81, open().peer(any(), ns("x"), false)),
                // Not in upstream (which assumes no SCTP): the SCTP rule does admit SCTP.
                sctp(
                    81,
                    open().peer(any(), ns("x"), false).all_ingress("x/a", true),
                ),
            ],
        )],
    )
}

/// should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin
/// doesn't support SCTP
pub fn sctp_policy_isolates() -> Case {
    case(
        "sctp_policy_isolates",
        "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
        vec![apply(
            "sctp-policy-isolates.yaml",
            vec![tcp(81, open().all_ingress("x/a", false))],
        )],
    )
}

/// should not allow access by TCP when a policy specifies only UDP
pub fn udp_only_not_tcp() -> Case {
    case(
        "udp_only_not_tcp",
        "should not allow access by TCP when a policy specifies only UDP",
        vec![apply(
            "udp-only-not-tcp.yaml",
            vec![
                tcp(81, open().all_ingress("x/a", false)),
                // Not in upstream: the UDP rule does admit UDP.
                udp(81, open()),
            ],
        )],
    )
}

/// The default-deny-ingress table of one protocol.
fn default_deny(check: fn(u16, Table) -> Check) -> Vec<Check> {
    vec![check(80, open().peer(any(), ns("x"), false))]
}

/// The Ports table of one protocol (port 81 from namespace y only).
fn ports_81(check: fn(u16, Table) -> Check) -> Vec<Check> {
    vec![
        check(
            81,
            open()
                .peer(ns("x"), pod("x/a"), false)
                .peer(ns("z"), pod("x/a"), false),
        ),
        // Not in upstream: port 80 of that protocol is closed to everyone.
        check(80, open().all_ingress("x/a", false)),
    ]
}

/// The pod-in-another-namespace table of one protocol.
fn from_y_a(check: fn(u16, Table) -> Check) -> Vec<Check> {
    vec![check(
        80,
        open().all_ingress("x/a", false).pair("y/a", "x/a", true),
    )]
}

/// NetworkPolicy between server and client using UDP: should support a 'default-deny-ingress'
/// policy
pub fn udp_default_deny_ingress() -> Case {
    case(
        "udp_default_deny_ingress",
        "using UDP: should support a 'default-deny-ingress' policy",
        vec![apply("udp-default-deny-ingress.yaml", default_deny(udp))],
    )
}

/// NetworkPolicy between server and client using UDP: should enforce policy based on Ports
pub fn udp_ports() -> Case {
    case(
        "udp_ports",
        "using UDP: should enforce policy based on Ports",
        vec![apply("udp-ports.yaml", ports_81(udp))],
    )
}

/// NetworkPolicy between server and client using UDP: should enforce policy to allow traffic
/// only from a pod in a different namespace based on PodSelector and NamespaceSelector
pub fn udp_pod_in_other_namespace() -> Case {
    case(
        "udp_pod_in_other_namespace",
        "using UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        vec![apply("udp-pod-in-other-namespace.yaml", from_y_a(udp))],
    )
}

/// NetworkPolicy between server and client using SCTP: should support a 'default-deny-ingress'
/// policy
pub fn sctp_default_deny_ingress() -> Case {
    case(
        "sctp_default_deny_ingress",
        "using SCTP: should support a 'default-deny-ingress' policy",
        vec![apply("sctp-default-deny-ingress.yaml", default_deny(sctp))],
    )
}

/// NetworkPolicy between server and client using SCTP: should enforce policy based on Ports
pub fn sctp_ports() -> Case {
    case(
        "sctp_ports",
        "using SCTP: should enforce policy based on Ports",
        vec![apply("sctp-ports.yaml", ports_81(sctp))],
    )
}

/// NetworkPolicy between server and client using SCTP: should enforce policy to allow traffic
/// only from a pod in a different namespace based on PodSelector and NamespaceSelector
pub fn sctp_pod_in_other_namespace() -> Case {
    case(
        "sctp_pod_in_other_namespace",
        "using SCTP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        vec![apply("sctp-pod-in-other-namespace.yaml", from_y_a(sctp))],
    )
}
