//! The upstream Kubernetes NetworkPolicy e2e suite (`test/e2e/network/netpol/`) re-encoded for
//! the meshd lab: the model (namespaces x, y, z; pods a, b, c) in `fixtures/model.yaml`, every
//! upstream case as a [`cases`] function with its policies as YAML fixtures and its truth
//! tables written by hand, the [`offline`] proof of those tables against the reference
//! evaluator, the [`runner`] that checks them on a two-node lab, and the policy change
//! [`latency`] measurement.

pub mod cases;
pub mod fixture;
pub mod latency;
pub mod offline;
pub mod reachability;
pub mod runner;
