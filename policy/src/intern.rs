//! Shared, immutable names and label sets, and the interner that makes equal ones one.
//!
//! A cluster's pods repeat themselves: every pod of a namespace names it, every pod of a node
//! names that node, and the pods of one workload carry the same labels. [`Name`] (a shared
//! string) and [`LabelSet`] (a shared, compact label set) let all of them point at one copy, and an
//! [`Interner`] hands out that copy. Equality, order and hashing are those of the contents, so
//! a shared value behaves exactly as the owned one it replaces; sharing only saves memory.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::model::Labels;

/// An immutable string, cheap to clone (a reference count), compared by content.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(Arc<str>);

impl Name {
    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Arc::from(s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name(Arc::from(s.as_str()))
    }
}

impl From<&Name> for Name {
    fn from(s: &Name) -> Self {
        s.clone()
    }
}

impl From<Name> for String {
    fn from(s: Name) -> Self {
        s.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

/// A pod's label set, shared by every pod that carries it (pods of one workload): one shared
/// [`Name`] per label, `key=value` (16 bytes a label where a key and a value took 32; a label
/// key never holds `=`: the API server refuses one and the batch decoder too), sorted by key.
/// A few dozen bytes where a `BTreeMap` takes a 500-byte node. Reads like [`Labels`]
/// ([`LabelSet::get`], [`LabelSet::iter`] in key order); compared and ordered by its
/// `(key, value)` pairs, hashed by its labels.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LabelSet(Arc<[Name]>);

/// The label set of a pod (the name the model uses).
pub type SharedLabels = LabelSet;

impl Default for LabelSet {
    fn default() -> Self {
        LabelSet(Arc::from(Vec::new()))
    }
}

/// A `key=value` label split at its first `=`.
fn split_label(label: &str) -> (&str, &str) {
    label.split_once('=').unwrap_or((label, ""))
}

impl LabelSet {
    /// The labels, borrowed (what an interned identity's labels are too).
    pub fn view(&self) -> LabelsView<'_> {
        LabelsView(&self.0)
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.view().get(key)
    }

    /// Whether label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The labels, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.view().iter()
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map.
    pub fn to_labels(&self) -> Labels {
        self.view().to_labels()
    }

    /// Whether two sets are the same copy (not just equal).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The set of `labels` (sorted by key, each key once, as a map gives them), each label
    /// made a name by `name`.
    fn from_pairs<'a>(
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        mut name: impl FnMut(&str) -> Name,
    ) -> Self {
        let mut label = String::new();
        LabelSet(
            labels
                .into_iter()
                .map(|(k, v)| {
                    label.clear();
                    label.push_str(k);
                    label.push('=');
                    label.push_str(v);
                    name(&label)
                })
                .collect(),
        )
    }
}

impl PartialOrd for LabelSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LabelSet {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A label set borrowed: the `key=value` names of a [`LabelSet`], or those an interned
/// identity holds beside its namespace ([`crate::ipcache::Identity::labels`]). Reads like a
/// [`LabelSet`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelsView<'a>(&'a [Name]);

impl<'a> LabelsView<'a> {
    /// The view of `labels`, `key=value` names sorted by key, each key once.
    pub(crate) fn of(labels: &'a [Name]) -> Self {
        LabelsView(labels)
    }

    /// The `key=value` names, in key order.
    pub(crate) fn names(self) -> &'a [Name] {
        self.0
    }

    /// The value of label `key`.
    pub fn get(self, key: &str) -> Option<&'a str> {
        self.0
            .binary_search_by(|label| split_label(label).0.cmp(key))
            .ok()
            .map(|i| split_label(&self.0[i]).1)
    }

    /// Whether label `key` is set.
    pub fn contains_key(self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The labels, in key order.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0.iter().map(|label| split_label(label))
    }

    /// How many labels.
    pub fn len(self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map.
    pub fn to_labels(self) -> Labels {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl fmt::Debug for LabelsView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> From<&'a LabelSet> for LabelsView<'a> {
    fn from(labels: &'a LabelSet) -> Self {
        labels.view()
    }
}

impl From<Labels> for LabelSet {
    fn from(labels: Labels) -> Self {
        LabelSet::from(&labels)
    }
}

impl From<&Labels> for LabelSet {
    fn from(labels: &Labels) -> Self {
        LabelSet::from_pairs(
            labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |label: &str| Name::from(label),
        )
    }
}

impl<const N: usize> From<[(String, String); N]> for LabelSet {
    fn from(pairs: [(String, String); N]) -> Self {
        Labels::from(pairs).into()
    }
}

/// What a label selector reads: the value of a label by key. Namespaces carry [`Labels`],
/// pods a [`LabelSet`]; selectors match either.
pub trait LabelLookup {
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelLookup for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl LabelLookup for LabelsView<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// Hands out one shared copy of each distinct name and label set it is given. It keeps what it
/// handed out until [`Interner::prune`] finds nobody else holding it.
#[derive(Debug, Default)]
pub struct Interner {
    names: HashSet<Name>,
    labels: HashSet<LabelSet>,
    /// Entries at the last prune: the next one is due when the sets have doubled since.
    pruned_at: usize,
}

impl Interner {
    /// The shared copy of `name`.
    pub fn name(&mut self, name: &str) -> Name {
        if let Some(known) = self.names.get(name) {
            return known.clone();
        }
        let new = Name::from(name);
        self.names.insert(new.clone());
        self.prune_if_grown();
        new
    }

    /// The shared copy of `labels` (its `key=value` labels shared names too).
    pub fn labels(&mut self, labels: &Labels) -> LabelSet {
        let set = self.labels_of_names(labels);
        if let Some(known) = self.labels.get(&set) {
            return known.clone();
        }
        self.labels.insert(set.clone());
        self.prune_if_grown();
        set
    }

    /// `labels` as a label set whose `key=value` labels are the shared names, without keeping
    /// the set itself: for a caller that shares equal sets its own way (the ipcache interns
    /// whole identities), so the interner holds no second entry per set.
    pub fn labels_of_names(&mut self, labels: &Labels) -> LabelSet {
        LabelSet::from_pairs(
            labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |label| self.name(label),
        )
    }

    /// How many names and label sets it holds.
    pub fn len(&self) -> usize {
        self.names.len() + self.labels.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets what only the interner still holds.
    pub fn prune(&mut self) {
        // Label sets first: the names they held may then be free too.
        self.labels.retain(|l| Arc::strong_count(&l.0) > 1);
        self.names.retain(|n| Arc::strong_count(&n.0) > 1);
        self.names.shrink_to_fit();
        self.labels.shrink_to_fit();
        self.pruned_at = self.len();
    }

    fn prune_if_grown(&mut self) {
        if self.len() > (2 * self.pruned_at).max(1024) {
            self.prune();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_compare_as_their_contents() {
        let mut interner = Interner::default();
        let a = interner.name("scale-bench");
        let b = interner.name(&String::from("scale-bench"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "scale-bench");
        assert_eq!(a, Name::from("scale-bench"));
        let (x, y) = (interner.name("a"), interner.name("b"));
        assert!(x < y, "ordered by content");
        let labels: Labels = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]
        .into();
        let l1 = interner.labels(&labels);
        let l2 = interner.labels(&labels);
        assert!(l1.ptr_eq(&l2));
        assert_eq!(l1, LabelSet::from(labels.clone()));
        assert_eq!(l1.to_labels(), labels);
        assert_eq!(l1.get("tier"), Some("front"));
        assert_eq!(l1.get("missing"), None);
        assert_eq!(
            l1.iter().collect::<Vec<_>>(),
            [("app", "web"), ("tier", "front")]
        );
        // scale-bench, a, b, app=web, tier=front; one label set.
        assert_eq!(interner.len(), 6);
    }

    #[test]
    fn prune_forgets_only_what_nobody_holds() {
        let mut interner = Interner::default();
        let kept = interner.name("kept");
        drop(interner.name("dropped"));
        interner.prune();
        assert_eq!(interner.len(), 1);
        assert!(Arc::ptr_eq(&interner.name("kept").0, &kept.0));
    }
}
