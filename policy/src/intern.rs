//! Shared, immutable names and label sets, and the interner that makes equal ones one.
//!
//! A cluster's pods repeat themselves: every pod of a namespace names it, every pod of a node
//! names that node, and the pods of one workload carry the same labels. [`Name`] (a shared
//! string) and [`SharedLabels`] (a shared label set) let all of them point at one copy, and an
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

/// A label set shared by every pod that carries it (pods of one workload).
pub type SharedLabels = Arc<Labels>;

/// Hands out one shared copy of each distinct name and label set it is given. It keeps what it
/// handed out until [`Interner::prune`] finds nobody else holding it.
#[derive(Debug, Default)]
pub struct Interner {
    names: HashSet<Name>,
    labels: HashSet<SharedLabels>,
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

    /// The shared copy of `labels`.
    pub fn labels(&mut self, labels: Labels) -> SharedLabels {
        if let Some(known) = self.labels.get(&labels) {
            return known.clone();
        }
        let new = Arc::new(labels);
        self.labels.insert(new.clone());
        self.prune_if_grown();
        new
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
        self.names.retain(|n| Arc::strong_count(&n.0) > 1);
        self.labels.retain(|l| Arc::strong_count(l) > 1);
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
        assert!(Name::from("a") < Name::from("b"));
        let labels: Labels = [("app".to_owned(), "web".to_owned())].into();
        let l1 = interner.labels(labels.clone());
        let l2 = interner.labels(labels);
        assert!(Arc::ptr_eq(&l1, &l2));
        assert_eq!(interner.len(), 2);
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
