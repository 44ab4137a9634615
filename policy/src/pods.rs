//! The world's pods by key: a `BTreeMap<PodKey, Arc<Pod>>` in behaviour, stored as an ordered
//! set of the shared pods themselves, each found by its own key.
//!
//! A map keeps the key beside the value: 32 bytes of `PodKey` (two shared strings the pod holds
//! already) plus the 8-byte pointer, 40 bytes an entry. This set keeps the pointer alone, ordered
//! and looked up by the key inside the pod, so an entry is 8 bytes (about 12 with its node
//! packed). Iteration, equality and every lookup are those of the map it replaces.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model::{Pod, PodKey};

/// A shared pod, ordered and looked up by its key.
#[derive(Clone, Debug)]
struct ByKey(Arc<Pod>);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

impl Borrow<PodKey> for ByKey {
    fn borrow(&self) -> &PodKey {
        &self.0.key
    }
}

/// Pods by namespace and name (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Pods(BTreeSet<ByKey>);

impl Pods {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pod `key`.
    pub fn get(&self, key: &PodKey) -> Option<&Arc<Pod>> {
        self.0.get(key).map(|entry| &entry.0)
    }

    /// Pod `key` for changing in place (copied first if shared); held again, under its own
    /// key, when the guard is dropped.
    pub fn get_mut(&mut self, key: &PodKey) -> Option<PodMut<'_>> {
        let pod = self.0.take(key)?.0;
        Some(PodMut {
            pods: self,
            pod: Some(pod),
        })
    }

    /// Whether pod `key` is held.
    pub fn contains_key(&self, key: &PodKey) -> bool {
        self.0.contains(key)
    }

    /// Holds `pod` as `key` (which must be its own key); returns the version it replaces.
    pub fn insert(&mut self, key: PodKey, pod: Arc<Pod>) -> Option<Arc<Pod>> {
        debug_assert_eq!(key, pod.key, "a pod is held under its own key");
        self.0.replace(ByKey(pod)).map(|old| old.0)
    }

    /// Forgets pod `key`; returns it.
    pub fn remove(&mut self, key: &PodKey) -> Option<Arc<Pod>> {
        self.0.take(key).map(|old| old.0)
    }

    /// How many pods.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &PodKey> + '_ {
        self.0.iter().map(|entry| &entry.0.key)
    }

    /// The pods, in key order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Pod>> + '_ {
        self.0.iter().map(|entry| &entry.0)
    }

    /// (key, pod) pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&PodKey, &Arc<Pod>)> + '_ {
        self.0.iter().map(|entry| (&entry.0.key, &entry.0))
    }

    /// Rebuilt from its own sorted content, which fills every node of the tree (one grown an
    /// insert at a time keeps them a little over half full).
    pub fn packed(self) -> Self {
        Pods(self.0.into_iter().collect())
    }
}

/// A pod being changed in place ([`Pods::get_mut`]).
#[derive(Debug)]
pub struct PodMut<'a> {
    pods: &'a mut Pods,
    /// Always `Some` until dropped.
    pod: Option<Arc<Pod>>,
}

impl std::ops::Deref for PodMut<'_> {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        self.pod.as_deref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for PodMut<'_> {
    fn deref_mut(&mut self) -> &mut Pod {
        Arc::make_mut(self.pod.as_mut().expect("held until dropped"))
    }
}

impl Drop for PodMut<'_> {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            self.pods.0.replace(ByKey(pod));
        }
    }
}

impl PartialEq for Pods {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .values()
                .zip(other.values())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl Eq for Pods {}

impl std::ops::Index<&PodKey> for Pods {
    type Output = Arc<Pod>;
    fn index(&self, key: &PodKey) -> &Arc<Pod> {
        self.get(key).expect("no pod with this key")
    }
}

impl FromIterator<(PodKey, Arc<Pod>)> for Pods {
    fn from_iter<I: IntoIterator<Item = (PodKey, Arc<Pod>)>>(iter: I) -> Self {
        let mut pods = Pods::new();
        for (key, pod) in iter {
            pods.insert(key, pod);
        }
        pods.packed()
    }
}

impl<const N: usize> From<[(PodKey, Arc<Pod>); N]> for Pods {
    fn from(pairs: [(PodKey, Arc<Pod>); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl Extend<(PodKey, Arc<Pod>)> for Pods {
    fn extend<I: IntoIterator<Item = (PodKey, Arc<Pod>)>>(&mut self, iter: I) {
        for (key, pod) in iter {
            self.insert(key, pod);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::LabelSet;

    fn pod(ns: &str, name: &str, ip: [u8; 4]) -> Arc<Pod> {
        Arc::new(Pod {
            key: PodKey::new(ns, name),
            labels: LabelSet::default(),
            addresses: vec![ip.into()],
            node: "n1".into(),
            named_ports: Default::default(),
        })
    }

    #[test]
    fn behaves_as_the_map_by_key() {
        let mut pods = Pods::new();
        let a = pod("x", "a", [10, 0, 0, 1]);
        let b = pod("x", "b", [10, 0, 0, 2]);
        assert!(pods.insert(b.key.clone(), b.clone()).is_none());
        assert!(pods.insert(a.key.clone(), a.clone()).is_none());
        let a2 = pod("x", "a", [10, 0, 0, 3]);
        let old = pods.insert(a2.key.clone(), a2.clone()).unwrap();
        assert!(Arc::ptr_eq(&old, &a), "the replaced version is returned");
        assert!(Arc::ptr_eq(&pods[&a.key], &a2), "and the new one held");
        assert_eq!(
            pods.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(pods.len(), 2);
        assert!(Arc::ptr_eq(&pods.remove(&b.key).unwrap(), &b));
        assert!(!pods.contains_key(&b.key));
        assert!(pods.get(&b.key).is_none());
        let same: Pods = [(a2.key.clone(), Arc::new((*a2).clone()))].into();
        assert_eq!(pods, same, "equal by content");
        assert_ne!(pods, Pods::new());
        assert_eq!(pods.clone().packed(), pods);
        pods.get_mut(&a.key).unwrap().node = "n2".into();
        assert_eq!(pods[&a.key].node, "n2", "changed in place");
        assert_eq!(a2.node, "n1", "a shared version is copied first");
        assert_eq!(pods.len(), 1);
    }
}
