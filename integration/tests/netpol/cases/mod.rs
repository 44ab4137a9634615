//! The cases of the suite: one function per upstream `network_policy.go` case (named after
//! it; the upstream title is in [`Case::upstream`]) plus the endPort, dual-stack and ipBlock
//! cases upstream lacks. A case is a sequence of steps; each step changes the cluster (applies
//! or deletes a fixture, relabels a pod or namespace) and then states, per protocol and port,
//! the truth table that must follow, written by hand as upstream writes it.
//!
//! Submodules: [`ingress`] (selectors and ports on ingress), [`egress`] (egress, ipBlock,
//! updates, deletion), [`protocols`] (the UDP and SCTP contexts and protocol confusions),
//! [`meshd`] (the cases upstream lacks).

pub mod egress;
pub mod ingress;
pub mod meshd;
pub mod protocols;

pub use egress::*;
pub use ingress::*;
pub use meshd::*;
pub use protocols::*;

use meshd_policy::model::Protocol;

use super::reachability::Table;

/// One case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Our name (the test function's).
    pub name: &'static str,
    /// Upstream's title (`f.It(...)`), or what the meshd addition checks.
    pub upstream: &'static str,
    /// Whether the fixtures hold placeholders of the family under test (`${…/host}`): the
    /// whole case then runs once per family, checking that family only.
    pub per_family: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A change to the cluster and the tables that must follow it.
#[derive(Clone, Debug)]
pub struct Step {
    /// The change.
    pub action: Action,
    /// What must hold afterwards; the first check is the one the convergence time is taken on,
    /// so it should differ from the table before the change.
    pub checks: Vec<Check>,
}

/// A change to the cluster.
#[derive(Clone, Debug)]
pub enum Action {
    /// `meshctl lab apply -f` a fixture (creating or updating its policies).
    Apply(&'static str),
    /// `meshctl lab delete -f` a fixture's policies.
    Delete(&'static str),
    /// `meshctl lab label --overwrite pod NS/NAME k=v` (or `k-`).
    LabelPod(&'static str, &'static str),
    /// `meshctl lab label --overwrite namespace NAME k=v` (or `k-`).
    LabelNamespace(&'static str, &'static str),
}

/// A truth table that must hold for one protocol and port.
#[derive(Clone, Debug)]
pub struct Check {
    /// The protocol probed.
    pub protocol: Protocol,
    /// The port probed.
    pub port: u16,
    /// Only this family (4 or 6); `None`: both (or, in a per-family case, the one under test).
    pub family: Option<u8>,
    /// The expected table.
    pub expected: Table,
}

impl Check {
    /// The same check for one family only.
    pub fn only(mut self, family: u8) -> Self {
        self.family = Some(family);
        self
    }

    /// Whether the check applies when probing `family`.
    pub fn covers(&self, family: u8) -> bool {
        self.family.is_none_or(|f| f == family)
    }
}

/// A TCP check.
pub fn tcp(port: u16, expected: Table) -> Check {
    check(Protocol::Tcp, port, expected)
}

/// A UDP check.
pub fn udp(port: u16, expected: Table) -> Check {
    check(Protocol::Udp, port, expected)
}

/// An SCTP check.
pub fn sctp(port: u16, expected: Table) -> Check {
    check(Protocol::Sctp, port, expected)
}

fn check(protocol: Protocol, port: u16, expected: Table) -> Check {
    Check {
        protocol,
        port,
        family: None,
        expected,
    }
}

/// A step applying `fixture`.
pub fn apply(fixture: &'static str, checks: Vec<Check>) -> Step {
    Step {
        action: Action::Apply(fixture),
        checks,
    }
}

/// A step deleting `fixture`'s policies.
pub fn delete(fixture: &'static str, checks: Vec<Check>) -> Step {
    Step {
        action: Action::Delete(fixture),
        checks,
    }
}

/// A step setting (`k=v`) or removing (`k-`) a label of pod `ns/name`.
pub fn label_pod(pod: &'static str, label: &'static str, checks: Vec<Check>) -> Step {
    Step {
        action: Action::LabelPod(pod, label),
        checks,
    }
}

/// A step setting (`k=v`) or removing (`k-`) a label of namespace `ns`.
pub fn label_namespace(ns: &'static str, label: &'static str, checks: Vec<Check>) -> Step {
    Step {
        action: Action::LabelNamespace(ns, label),
        checks,
    }
}

/// A case of both families on one set of policies.
pub fn case(name: &'static str, upstream: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name,
        upstream,
        per_family: false,
        steps,
    }
}

/// A case whose fixtures take addresses of the family under test.
pub fn per_family(name: &'static str, upstream: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name,
        upstream,
        per_family: true,
        steps,
    }
}

/// The fixture files a case uses.
pub fn fixtures(case: &Case) -> Vec<&'static str> {
    case.steps
        .iter()
        .filter_map(|s| match s.action {
            Action::Apply(f) | Action::Delete(f) => Some(f),
            _ => None,
        })
        .collect()
}
