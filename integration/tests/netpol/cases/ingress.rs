//! Upstream's ingress cases over TCP: default deny, pod and namespace selectors (matchLabels,
//! matchExpressions, OR and AND), ports, stacked policies, allow-all, named ports and
//! relabelling. Tables list all nine pods; where upstream's newer versions create only some
//! pods, the statements are the ones that hold for all nine.

use super::super::reachability::{any, ns, pod, Table};
use super::{apply, case, label_namespace, label_pod, tcp, Case};

/// Everything allowed: the starting point of every table.
fn open() -> Table {
    Table::all(true)
}

/// should support a 'default-deny-ingress' policy
pub fn default_deny_ingress() -> Case {
    case(
        "default_deny_ingress",
        "should support a 'default-deny-ingress' policy",
        vec![apply(
            "default-deny-ingress.yaml",
            vec![tcp(80, open().peer(any(), ns("x"), false))],
        )],
    )
}

/// should enforce policy to allow traffic from pods within server namespace based on PodSelector
pub fn pod_selector() -> Case {
    case(
        "pod_selector",
        "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        vec![apply(
            "pod-selector.yaml",
            vec![tcp(
                80,
                open().all_ingress("x/a", false).pair("x/b", "x/a", true),
            )],
        )],
    )
}

/// should enforce policy to allow ingress traffic for a target
pub fn ingress_for_a_target() -> Case {
    case(
        "ingress_for_a_target",
        "should enforce policy to allow ingress traffic for a target",
        vec![apply(
            "ingress-for-a-target.yaml",
            vec![tcp(
                80,
                open().peer(any(), ns("x"), false).all_ingress("x/a", true),
            )],
        )],
    )
}

/// should enforce policy to allow ingress traffic from pods in all namespaces
pub fn ingress_from_all_namespaces() -> Case {
    case(
        "ingress_from_all_namespaces",
        "should enforce policy to allow ingress traffic from pods in all namespaces",
        vec![apply(
            "ingress-from-all-namespaces.yaml",
            vec![tcp(80, open())],
        )],
    )
}

/// should enforce policy to allow traffic only from a different namespace, based on
/// NamespaceSelector
pub fn namespace_selector() -> Case {
    case(
        "namespace_selector",
        "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
        vec![apply(
            "namespace-selector.yaml",
            vec![tcp(
                80,
                open()
                    .peer(ns("x"), pod("x/a"), false)
                    .peer(ns("z"), pod("x/a"), false),
            )],
        )],
    )
}

/// should enforce policy based on PodSelector with MatchExpressions
pub fn pod_selector_match_expressions() -> Case {
    case(
        "pod_selector_match_expressions",
        "should enforce policy based on PodSelector with MatchExpressions",
        vec![apply(
            "pod-selector-match-expressions.yaml",
            vec![tcp(
                80,
                open().all_ingress("x/a", false).pair("x/b", "x/a", true),
            )],
        )],
    )
}

/// should enforce policy based on NamespaceSelector with MatchExpressions
pub fn namespace_selector_match_expressions() -> Case {
    case(
        "namespace_selector_match_expressions",
        "should enforce policy based on NamespaceSelector with MatchExpressions",
        vec![apply(
            "namespace-selector-match-expressions.yaml",
            vec![tcp(
                80,
                open()
                    .peer(ns("x"), pod("x/a"), false)
                    .peer(ns("z"), pod("x/a"), false),
            )],
        )],
    )
}

/// should enforce policy based on PodSelector or NamespaceSelector
pub fn pod_or_namespace_selector() -> Case {
    case(
        "pod_or_namespace_selector",
        "should enforce policy based on PodSelector or NamespaceSelector",
        vec![apply(
            "pod-or-namespace-selector.yaml",
            vec![tcp(
                80,
                open().pair("x/a", "x/a", false).pair("x/c", "x/a", false),
            )],
        )],
    )
}

/// should enforce policy based on PodSelector and NamespaceSelector
pub fn pod_and_namespace_selector() -> Case {
    case(
        "pod_and_namespace_selector",
        "should enforce policy based on PodSelector and NamespaceSelector",
        vec![apply(
            "pod-and-namespace-selector.yaml",
            vec![tcp(
                80,
                open()
                    .all_ingress("x/a", false)
                    .pair("y/b", "x/a", true)
                    .pair("z/b", "x/a", true),
            )],
        )],
    )
}

/// should enforce policy based on Multiple PodSelectors and NamespaceSelectors
pub fn multiple_pod_and_namespace_selectors() -> Case {
    case(
        "multiple_pod_and_namespace_selectors",
        "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        vec![apply(
            "multiple-pod-and-namespace-selectors.yaml",
            vec![tcp(
                80,
                open()
                    .peer(ns("x"), pod("x/a"), false)
                    .pair("y/a", "x/a", false)
                    // Upstream's current version creates no z/a; its nine-pod version says so.
                    .pair("z/a", "x/a", false),
            )],
        )],
    )
}

/// should enforce policy based on any PodSelectors
pub fn any_pod_selectors() -> Case {
    case(
        "any_pod_selectors",
        "should enforce policy based on any PodSelectors",
        vec![apply(
            "any-pod-selectors.yaml",
            vec![tcp(
                80,
                open()
                    .all_ingress("x/a", false)
                    .pair("x/b", "x/a", true)
                    .pair("x/c", "x/a", true),
            )],
        )],
    )
}

/// should enforce policy to allow traffic only from a pod in a different namespace based on
/// PodSelector and NamespaceSelector
pub fn pod_in_other_namespace() -> Case {
    case(
        "pod_in_other_namespace",
        "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        vec![apply(
            "pod-in-other-namespace.yaml",
            vec![tcp(
                80,
                open().all_ingress("x/a", false).pair("y/a", "x/a", true),
            )],
        )],
    )
}

/// The table of `ports.yaml` on its port: namespace y reaches x/a, x and z do not.
fn from_y_only() -> Table {
    open()
        .peer(ns("x"), pod("x/a"), false)
        .peer(ns("y"), pod("x/a"), true)
        .peer(ns("z"), pod("x/a"), false)
}

/// should enforce policy based on Ports
pub fn ports() -> Case {
    case(
        "ports",
        "should enforce policy based on Ports",
        vec![apply(
            "ports.yaml",
            vec![
                tcp(81, from_y_only()),
                // Not in upstream: the other port is closed to everyone.
                tcp(80, open().all_ingress("x/a", false)),
            ],
        )],
    )
}

/// should enforce multiple, stacked policies with overlapping podSelectors
pub fn stacked_policies() -> Case {
    case(
        "stacked_policies",
        "should enforce multiple, stacked policies with overlapping podSelectors",
        vec![
            apply(
                "ports.yaml",
                vec![
                    tcp(81, from_y_only()),
                    tcp(80, open().all_ingress("x/a", false)),
                ],
            ),
            apply(
                "stacked-port-80.yaml",
                vec![tcp(80, from_y_only()), tcp(81, from_y_only())],
            ),
        ],
    )
}

/// should support allow-all policy
pub fn allow_all() -> Case {
    case(
        "allow_all",
        "should support allow-all policy",
        vec![apply(
            "allow-all.yaml",
            vec![tcp(80, open()), tcp(81, open())],
        )],
    )
}

/// should allow ingress access on one named port
pub fn named_port_ingress() -> Case {
    case(
        "named_port_ingress",
        "should allow ingress access on one named port",
        vec![apply(
            "named-port-ingress.yaml",
            vec![tcp(80, open().peer(any(), ns("x"), false)), tcp(81, open())],
        )],
    )
}

/// should allow ingress access from namespace on one named port
pub fn named_port_ingress_from_namespace() -> Case {
    case(
        "named_port_ingress_from_namespace",
        "should allow ingress access from namespace on one named port",
        vec![apply(
            "named-port-ingress-from-namespace.yaml",
            vec![
                tcp(
                    80,
                    open()
                        .peer(ns("x"), pod("x/a"), false)
                        .peer(ns("z"), pod("x/a"), false),
                ),
                tcp(81, open().all_ingress("x/a", false)),
            ],
        )],
    )
}

/// should allow ingress access from updated namespace
pub fn namespace_relabel() -> Case {
    case(
        "namespace_relabel",
        "should allow ingress access from updated namespace",
        vec![
            apply(
                "namespace-relabel.yaml",
                vec![tcp(80, open().all_ingress("x/a", false))],
            ),
            label_namespace(
                "y",
                "ns2=updated",
                vec![tcp(
                    80,
                    open().all_ingress("x/a", false).peer(ns("y"), any(), true),
                )],
            ),
        ],
    )
}

/// should allow ingress access from updated pod
pub fn pod_relabel() -> Case {
    case(
        "pod_relabel",
        "should allow ingress access from updated pod",
        vec![
            apply(
                "pod-relabel.yaml",
                vec![tcp(80, open().all_ingress("x/a", false))],
            ),
            label_pod(
                "x/b",
                "pod2=updated",
                vec![tcp(
                    80,
                    open().all_ingress("x/a", false).pair("x/b", "x/a", true),
                )],
            ),
        ],
    )
}

/// should deny ingress from pods on other namespaces
pub fn deny_ingress_from_other_namespaces() -> Case {
    case(
        "deny_ingress_from_other_namespaces",
        "should deny ingress from pods on other namespaces",
        vec![apply(
            "deny-ingress-from-other-namespaces.yaml",
            vec![tcp(
                80,
                open()
                    .peer(ns("y"), ns("x"), false)
                    .peer(ns("z"), ns("x"), false),
            )],
        )],
    )
}

/// should deny ingress access to updated pod
pub fn deny_ingress_to_updated_pod() -> Case {
    case(
        "deny_ingress_to_updated_pod",
        "should deny ingress access to updated pod",
        vec![
            apply("deny-ingress-to-updated-pod.yaml", vec![tcp(80, open())]),
            label_pod(
                "x/a",
                "target=isolated",
                vec![tcp(80, open().all_ingress("x/a", false))],
            ),
        ],
    )
}

/// should enforce multiple ingress policies with ingress allow-all policy taking precedence
pub fn ingress_allow_all_precedence() -> Case {
    case(
        "ingress_allow_all_precedence",
        "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        vec![
            apply(
                "ingress-port-80.yaml",
                vec![tcp(81, open().peer(any(), ns("x"), false)), tcp(80, open())],
            ),
            apply("ingress-allow-all.yaml", vec![tcp(81, open())]),
        ],
    )
}

/// should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using
/// default ns label
pub fn default_namespace_label_match_labels() -> Case {
    case(
        "default_namespace_label_match_labels",
        "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
        vec![apply(
            "default-namespace-label-match-labels.yaml",
            vec![tcp(
                80,
                open()
                    .peer(ns("x"), pod("x/a"), false)
                    .peer(ns("z"), pod("x/a"), false),
            )],
        )],
    )
}
