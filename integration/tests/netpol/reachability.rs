//! Truth tables over the upstream model's nine pods (x/a … z/c), written the way upstream's
//! `reachability.go` states them: start from everything allowed (or denied) and list the
//! exceptions in order, later statements overriding earlier ones. Also the readable diff of an
//! expected against an observed table.
//!
//! Expectations are only ever written by hand with these builders: nothing here evaluates a
//! policy.

use std::fmt::Write as _;

use meshd_policy::e2e_model::{NAMESPACES, PODS};

/// Number of pods in the model.
pub const N: usize = 9;

/// The model's pods as `ns/name`, in table order (x/a, x/b, … z/c).
pub fn pod_names() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The table index of pod `ns/name`; panics on a pod the model does not have (a typo in a
/// case is a bug in the case).
pub fn index(pod: &str) -> usize {
    pod_names()
        .iter()
        .position(|p| p == pod)
        .unwrap_or_else(|| panic!("{pod:?} is not a pod of the model (x/a … z/c)"))
}

/// Which pods a statement is about, as upstream's `Peer{Namespace, Pod}`: empty fields match
/// every pod.
#[derive(Clone, Copy, Debug)]
pub enum Pods {
    /// Every pod.
    Any,
    /// Every pod of a namespace.
    Namespace(&'static str),
    /// One pod, `ns/name`.
    One(&'static str),
}

impl Pods {
    fn contains(self, i: usize) -> bool {
        let name = &pod_names()[i];
        match self {
            Pods::Any => true,
            Pods::Namespace(ns) => name.split('/').next() == Some(ns),
            Pods::One(pod) => name == pod,
        }
    }
}

/// Every pod.
pub fn any() -> Pods {
    Pods::Any
}

/// Every pod of namespace `ns`.
pub fn ns(ns: &'static str) -> Pods {
    Pods::Namespace(ns)
}

/// The pod `ns/name`.
pub fn pod(pod: &'static str) -> Pods {
    index(pod);
    Pods::One(pod)
}

/// A 9×9 truth table: `cell(from, to)` says whether a new connection from pod `from` to pod
/// `to` is allowed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Table {
    cells: [[bool; N]; N],
}

impl Table {
    /// Every pair allowed (`allowed = true`) or every pair denied.
    pub fn all(allowed: bool) -> Self {
        Self {
            cells: [[allowed; N]; N],
        }
    }

    /// Upstream's `ExpectPeer`: every pair from `from` to `to` is `allowed`.
    pub fn peer(mut self, from: Pods, to: Pods, allowed: bool) -> Self {
        for f in 0..N {
            for t in 0..N {
                if from.contains(f) && to.contains(t) {
                    self.cells[f][t] = allowed;
                }
            }
        }
        self
    }

    /// Upstream's `Expect`: the pair `from` → `to` is `allowed`.
    pub fn pair(self, from: &'static str, to: &'static str, allowed: bool) -> Self {
        self.peer(pod(from), pod(to), allowed)
    }

    /// Upstream's `ExpectAllIngress`: everything into `to` is `allowed`.
    pub fn all_ingress(self, to: &'static str, allowed: bool) -> Self {
        self.peer(any(), pod(to), allowed)
    }

    /// Upstream's `ExpectAllEgress`: everything out of `from` is `allowed`.
    pub fn all_egress(self, from: &'static str, allowed: bool) -> Self {
        self.peer(pod(from), any(), allowed)
    }

    /// Sets one cell (for building observed tables).
    pub fn set(&mut self, from: usize, to: usize, allowed: bool) {
        self.cells[from][to] = allowed;
    }

    /// One cell.
    pub fn get(&self, from: usize, to: usize) -> bool {
        self.cells[from][to]
    }

    /// The pairs where `observed` differs from `self`, leaving out a pod's connection to itself
    /// when `ignore_loopback` (as upstream does: that traffic never leaves the pod).
    pub fn mismatches(&self, observed: &Table, ignore_loopback: bool) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for f in 0..N {
            for t in 0..N {
                if ignore_loopback && f == t {
                    continue;
                }
                if self.cells[f][t] != observed.cells[f][t] {
                    out.push((f, t));
                }
            }
        }
        out
    }

    /// Whether `observed` matches, see [`Table::mismatches`].
    pub fn matches(&self, observed: &Table, ignore_loopback: bool) -> bool {
        self.mismatches(observed, ignore_loopback).is_empty()
    }
}

/// The table as upstream prints it: rows are sources, columns destinations, `.` allowed, `X`
/// denied.
pub fn render(table: &Table) -> String {
    grid(|f, t| if table.get(f, t) { '.' } else { 'X' })
}

/// Expected, observed and the difference (`!` where they differ, `-` for an ignored
/// loopback pair), side by side under one header.
pub fn diff(expected: &Table, observed: &Table, ignore_loopback: bool) -> String {
    let names = pod_names();
    let e = render(expected);
    let o = render(observed);
    let d = grid(|f, t| {
        if ignore_loopback && f == t {
            '-'
        } else if expected.get(f, t) == observed.get(f, t) {
            ' '
        } else {
            '!'
        }
    });
    let width = e.lines().next().map_or(0, str::len);
    let mut out = format!(
        "{:<width$}   {:<width$}   differences\n",
        "expected", "observed"
    );
    for ((e, o), d) in e.lines().zip(o.lines()).zip(d.lines()) {
        let _ = writeln!(out, "{e:<width$}   {o:<width$}   {d}");
    }
    let wrong: Vec<String> = expected
        .mismatches(observed, ignore_loopback)
        .into_iter()
        .map(|(f, t)| {
            format!(
                "{} -> {} expected {}",
                names[f],
                names[t],
                if expected.get(f, t) {
                    "allowed"
                } else {
                    "denied"
                }
            )
        })
        .collect();
    let _ = writeln!(out, "{} wrong: {}", wrong.len(), wrong.join(", "));
    out
}

fn grid(mut cell: impl FnMut(usize, usize) -> char) -> String {
    let names = pod_names();
    let mut out = String::from("    ");
    for n in &names {
        let _ = write!(out, " {}", n.replace('/', ""));
    }
    out.push('\n');
    for (f, from) in names.iter().enumerate() {
        out.push_str(from);
        out.push(' ');
        for t in 0..N {
            let _ = write!(out, "  {}", cell(f, t));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_apply_in_order_and_later_ones_win() {
        let t = Table::all(true)
            .all_ingress("x/a", false)
            .pair("x/b", "x/a", true);
        assert!(!t.get(index("y/a"), index("x/a")));
        assert!(t.get(index("x/b"), index("x/a")));
        assert!(t.get(index("x/a"), index("y/a")));
        let t = Table::all(true).peer(ns("x"), any(), false);
        assert!(!t.get(index("x/c"), index("z/c")));
        assert!(t.get(index("y/c"), index("x/c")));
    }

    #[test]
    fn loopback_is_ignored_only_when_asked() {
        let expected = Table::all(true).pair("x/a", "x/a", false);
        let observed = Table::all(true);
        assert!(expected.matches(&observed, true));
        assert!(!expected.matches(&observed, false));
        let text = diff(&expected, &Table::all(false), true);
        assert!(text.contains("x/b -> x/a expected allowed"), "{text}");
        assert!(!text.contains("x/a -> x/a"), "{text}");
    }
}
