//! Cases upstream lacks: `endPort` ranges on ingress and egress, ipBlocks of both families in
//! one rule, an ipBlock with except on ingress, and implied `policyTypes`.

use super::super::reachability::{any, ns, pod, Table};
use super::{apply, case, per_family, tcp, udp, Case};

/// Everything allowed: the starting point of every table.
fn open() -> Table {
    Table::all(true)
}

/// endPort on ingress: a range beside the probed port, one ending on it, then every UDP port.
pub fn end_port_ingress() -> Case {
    case(
        "end_port_ingress",
        "(meshd) endPort ranges on ingress, updated in place",
        vec![
            apply(
                "end-port-ingress-81-82.yaml",
                vec![
                    tcp(80, open().all_ingress("x/a", false)),
                    tcp(81, open()),
                    udp(81, open().all_ingress("x/a", false)),
                ],
            ),
            apply(
                "end-port-ingress-79-80.yaml",
                vec![tcp(80, open()), tcp(81, open().all_ingress("x/a", false))],
            ),
            apply(
                "end-port-ingress-udp-all.yaml",
                vec![
                    tcp(80, open().all_ingress("x/a", false)),
                    udp(80, open()),
                    udp(81, open()),
                ],
            ),
        ],
    )
}

/// endPort on egress, UDP and TCP ranges in one rule.
pub fn end_port_egress() -> Case {
    case(
        "end_port_egress",
        "(meshd) endPort ranges on egress, UDP and TCP in one rule",
        vec![apply(
            "end-port-egress.yaml",
            vec![
                tcp(80, open().peer(ns("x"), any(), false)),
                tcp(81, open()),
                udp(80, open()),
                udp(81, open()),
            ],
        )],
    )
}

/// ipBlocks of both families in one rule: each admits its own family only.
pub fn dual_stack_ipblock() -> Case {
    case(
        "dual_stack_ipblock",
        "(meshd) an IPv4 and an IPv6 ipBlock in one egress rule: each admits its family only",
        vec![apply(
            "dual-stack-ipblock.yaml",
            vec![
                tcp(80, open().all_egress("x/a", false).pair("x/a", "y/b", true)).only(4),
                tcp(80, open().all_egress("x/a", false).pair("x/a", "y/c", true)).only(6),
            ],
        )],
    )
}

/// An ipBlock with except on ingress, per family.
pub fn ingress_cidr_except() -> Case {
    per_family(
        "ingress_cidr_except",
        "(meshd) ipBlock with except on ingress: pod sources match ipBlocks, the except narrows",
        vec![apply(
            "ingress-from-cidr-except.yaml",
            vec![tcp(80, open().pair("y/a", "x/a", false))],
        )],
    )
}

/// A policy without policyTypes but with egress rules isolates both directions.
pub fn implied_policy_types() -> Case {
    case(
        "implied_policy_types",
        "(meshd) policyTypes left out: egress rules imply Ingress and Egress",
        vec![apply(
            "implied-policy-types.yaml",
            vec![tcp(
                80,
                open()
                    .all_egress("x/a", false)
                    .peer(pod("x/a"), ns("y"), true)
                    .all_ingress("x/a", false),
            )],
        )],
    )
}
