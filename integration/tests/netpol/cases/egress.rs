//! Upstream's egress cases over TCP, the cases of both directions, policy update and deletion,
//! and the ipBlock cases (run once per family, on the pods' addresses of that family).

use super::super::reachability::{any, ns, pod, Table};
use super::{apply, case, delete, per_family, tcp, Case};

/// Everything allowed: the starting point of every table.
fn open() -> Table {
    Table::all(true)
}

/// Nothing in or out of namespace x.
fn x_sealed() -> Table {
    open()
        .peer(any(), ns("x"), false)
        .peer(ns("x"), any(), false)
}

/// should support a 'default-deny-all' policy
pub fn default_deny_all() -> Case {
    case(
        "default_deny_all",
        "should support a 'default-deny-all' policy",
        vec![apply("default-deny-all.yaml", vec![tcp(80, x_sealed())])],
    )
}

/// should allow egress access on one named port
pub fn named_port_egress() -> Case {
    case(
        "named_port_egress",
        "should allow egress access on one named port",
        vec![apply(
            "named-port-egress.yaml",
            vec![tcp(81, open().peer(ns("x"), any(), false)), tcp(80, open())],
        )],
    )
}

/// should enforce updated policy
pub fn policy_update() -> Case {
    case(
        "policy_update",
        "should enforce updated policy",
        vec![
            apply("policy-update-allow.yaml", vec![tcp(81, open())]),
            apply(
                "policy-update-deny.yaml",
                vec![tcp(81, open().peer(any(), ns("x"), false))],
            ),
        ],
    )
}

/// should deny egress from pods based on PodSelector
pub fn deny_egress_pod_selector() -> Case {
    case(
        "deny_egress_pod_selector",
        "should deny egress from pods based on PodSelector",
        vec![apply(
            "deny-egress-pod-selector.yaml",
            vec![tcp(80, open().all_egress("x/a", false))],
        )],
    )
}

/// should deny egress from all pods in a namespace
pub fn deny_egress_namespace() -> Case {
    case(
        "deny_egress_namespace",
        "should deny egress from all pods in a namespace",
        vec![apply(
            "deny-egress-namespace.yaml",
            vec![tcp(80, open().peer(ns("x"), any(), false))],
        )],
    )
}

/// should work with Ingress, Egress specified together
pub fn ingress_and_egress_together() -> Case {
    case(
        "ingress_and_egress_together",
        "should work with Ingress, Egress specified together",
        vec![apply(
            "ingress-and-egress-together.yaml",
            vec![
                tcp(
                    80,
                    open().all_ingress("x/a", false).pair("x/b", "x/a", true),
                ),
                tcp(
                    81,
                    open()
                        .all_ingress("x/a", false)
                        .all_egress("x/a", false)
                        .pair("x/b", "x/a", true),
                ),
            ],
        )],
    )
}

/// should support denying of egress traffic on the client side (even if the server explicitly
/// allows this traffic)
pub fn client_side_egress_deny() -> Case {
    case(
        "client_side_egress_deny",
        "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        vec![apply(
            "client-side-egress-deny.yaml",
            vec![tcp(
                80,
                open()
                    .peer(pod("x/a"), any(), false)
                    .peer(any(), pod("y/a"), false)
                    .peer(pod("x/a"), pod("y/a"), true)
                    .peer(any(), pod("y/b"), false),
            )],
        )],
    )
}

/// should enforce egress policy allowing traffic to a server in a different namespace based on
/// PodSelector and NamespaceSelector
pub fn egress_to_pod_in_other_namespace() -> Case {
    case(
        "egress_to_pod_in_other_namespace",
        "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
        vec![apply(
            "egress-to-pod-in-other-namespace.yaml",
            vec![tcp(
                80,
                open().all_egress("x/a", false).pair("x/a", "y/a", true),
            )],
        )],
    )
}

/// should enforce multiple egress policies with egress allow-all policy taking precedence
pub fn egress_allow_all_precedence() -> Case {
    case(
        "egress_allow_all_precedence",
        "should enforce multiple egress policies with egress allow-all policy taking precedence",
        vec![
            apply(
                "egress-port-80.yaml",
                vec![tcp(81, open().peer(ns("x"), any(), false)), tcp(80, open())],
            ),
            apply("egress-allow-all.yaml", vec![tcp(81, open())]),
        ],
    )
}

/// should stop enforcing policies after they are deleted
pub fn delete_stops_enforcement() -> Case {
    case(
        "delete_stops_enforcement",
        "should stop enforcing policies after they are deleted",
        vec![
            apply("default-deny-all.yaml", vec![tcp(80, x_sealed())]),
            delete("default-deny-all.yaml", vec![tcp(80, open())]),
        ],
    )
}

/// should allow egress access to server in CIDR block
pub fn egress_to_cidr() -> Case {
    per_family(
        "egress_to_cidr",
        "should allow egress access to server in CIDR block",
        vec![apply(
            "egress-to-cidr.yaml",
            vec![tcp(
                80,
                open().all_egress("x/a", false).pair("x/a", "y/b", true),
            )],
        )],
    )
}

/// should enforce except clause while egress access to server in CIDR block
pub fn cidr_except() -> Case {
    per_family(
        "cidr_except",
        "should enforce except clause while egress access to server in CIDR block",
        vec![apply(
            "cidr-except.yaml",
            vec![tcp(80, open().pair("x/a", "x/b", false))],
        )],
    )
}

/// should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed
pub fn overlapping_cidr_and_except() -> Case {
    per_family(
        "overlapping_cidr_and_except",
        "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        vec![
            apply(
                "cidr-except.yaml",
                vec![tcp(80, open().pair("x/a", "x/b", false))],
            ),
            apply(
                "cidr-overlap-host.yaml",
                vec![tcp(
                    80,
                    open().all_egress("x/a", false).pair("x/a", "x/b", true),
                )],
            ),
            // A meshd addition: the except of one policy does not take away what another allows.
            apply("cidr-overlap-except.yaml", vec![tcp(80, open())]),
        ],
    )
}

/// should enforce policies to check ingress and egress policies can be controlled
/// independently based on PodSelector
pub fn ingress_egress_independent() -> Case {
    case(
        "ingress_egress_independent",
        "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
        vec![
            apply("independent-egress.yaml", vec![tcp(80, open())]),
            apply(
                "independent-ingress.yaml",
                vec![tcp(80, open().all_ingress("x/a", false))],
            ),
        ],
    )
}

/// should enforce policy based on NamespaceSelector with MatchExpressions using default ns label
pub fn default_namespace_label_match_expressions() -> Case {
    case(
        "default_namespace_label_match_expressions",
        "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
        vec![apply(
            "default-namespace-label-match-expressions.yaml",
            vec![tcp(80, open().peer(pod("x/a"), ns("y"), false))],
        )],
    )
}
