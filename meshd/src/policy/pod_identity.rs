//! Pod identity per node: between a registry's raw watches and the policy loop.
//!
//! A node's meshd watches only its **own** node's Pods and every node's **endpoint batch**
//! ([`super::endpoint_batch`]); Namespaces and NetworkPolicies pass through unchanged. This
//! stage turns them into the [`ObjectEvent`]s the policy loop takes:
//!
//! * its own pods, kept here (a node's pods are few), become [`ObjectEvent::NodePods`] for this
//!   node at every change, and are published as this node's batch: coalesced (the first write
//!   [`DEBOUNCE`] after a change, then at most one every [`MIN_INTERVAL`]) and only when the
//!   content changed, so a burst of pods starting together costs one or two writes. Nothing is
//!   published before the own pods were listed once (an empty batch would withdraw them).
//! * another node's batch is decoded and vetted against that node's pod CIDRs (its record):
//!   refused entries and addresses are reported, never compiled. A batch whose node has no
//!   known pod CIDRs (not known yet, or gone: its CIDRs may go to another node) is held back,
//!   its pods withdrawn meanwhile (reported), and tried again every [`RETRY`]. This node's own
//!   batch, seen in the watch, is ignored: its own watch is the truth.
//! * the Pod kind counts as listed (`ListDone(Pod)`) once both the own pods and the batches
//!   have been listed and no batch is held back (at most [`LIST_HOLD_MAX`]): before, the policy
//!   loop writes nothing, so a restart opens no gap while the node records arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;
use meshd_policy::intern::Interner;
use meshd_policy::model::{Pod, PodKey};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::endpoint_batch;
use super::objects::{Kind, Object, ObjectEvent};

/// Delay from the first change to the batch's write (gathers pods starting together).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Least time between two writes of this node's batch.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a batch held back (its node's pod CIDRs unknown) or a failed write is retried.
pub const RETRY: Duration = Duration::from_secs(1);
/// Longest the end of the Pod list waits for held-back batches (their nodes' records).
pub const LIST_HOLD_MAX: Duration = Duration::from_secs(10);
/// Capacity of the channel [`spawn`] returns.
const CHANNEL_CAPACITY: usize = 4096;

/// What a registry's raw watch of the batches reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchEvent {
    /// A (re)list of the batches begins.
    ListStart,
    /// Node `node`'s batch exists with this content (listed, added or changed).
    Upsert {
        /// The node it belongs to (from the object's or file's name).
        node: String,
        /// Its content, untrusted.
        content: Vec<u8>,
    },
    /// Node `node`'s batch exists but cannot be read (`error` says why).
    Unreadable {
        /// The node.
        node: String,
        /// Why.
        error: String,
    },
    /// Node `node`'s batch is gone.
    Remove(String),
    /// The (re)list of the batches is complete.
    ListDone,
}

/// What a registry's raw watches report: the objects of its own node's pod watch, Namespaces
/// and NetworkPolicies, and the batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// An object event (Pods: this node's own only; others are ignored).
    Object(ObjectEvent),
    /// A batch event.
    Batch(BatchEvent),
}

/// Node `name`'s pod CIDRs, if its record is known.
pub type PodCidrLookup = Box<dyn Fn(&str) -> Option<Vec<IpNet>> + Send>;
/// Writes this node's batch (the encoded content); the error says what failed.
pub type BatchWriter = Box<dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send>;

/// The pure state of the stage. See the module doc.
pub struct PodIdentity {
    node: String,
    lookup: PodCidrLookup,
    own: BTreeMap<PodKey, Pod>,
    /// The own pods' list under way.
    own_listing: Option<BTreeMap<PodKey, Pod>>,
    own_synced: bool,
    /// The batches' list completed, its `ListDone(Pod)` waiting for the own pods' list.
    batches_done_waiting: bool,
    /// Batches whose node's pod CIDRs are not known yet: raw content, tried again.
    held_back: BTreeMap<String, Vec<u8>>,
    /// The own pods changed since the last batch was written.
    dirty: bool,
    /// The content last written.
    published: Option<String>,
    /// Names and label sets of the batches read: a namespace, a node, a workload's labels are
    /// held once however many pods and batches name them.
    interner: Interner,
}

impl PodIdentity {
    /// The stage of node `node`, vetting batches with `lookup`.
    pub fn new(node: &str, lookup: PodCidrLookup) -> Self {
        Self {
            node: node.to_owned(),
            lookup,
            own: BTreeMap::new(),
            own_listing: None,
            own_synced: false,
            batches_done_waiting: false,
            held_back: BTreeMap::new(),
            dirty: false,
            published: None,
            interner: Interner::default(),
        }
    }

    /// Takes one raw event; returns the events for the policy loop.
    pub fn on_event(&mut self, event: SourceEvent) -> Vec<ObjectEvent> {
        match event {
            SourceEvent::Object(event) => self.on_object(event),
            SourceEvent::Batch(event) => self.on_batch(event),
        }
    }

    fn on_object(&mut self, event: ObjectEvent) -> Vec<ObjectEvent> {
        match event {
            ObjectEvent::ListStart(Kind::Pod) => {
                self.own_listing = Some(BTreeMap::new());
                Vec::new()
            }
            ObjectEvent::ListDone(Kind::Pod) => {
                self.own = self.own_listing.take().unwrap_or_default();
                self.own_synced = true;
                self.dirty = true;
                let mut out = vec![self.own_pods()];
                out.extend(self.finish_list(false));
                out
            }
            ObjectEvent::Upsert(Object::Pod(pod)) => {
                let key = pod.key.clone();
                if pod.node != self.node {
                    // Not (or no longer) this node's: moved away, or a source without a filter.
                    return self.forget_own(&key);
                }
                match self.own_listing.as_mut() {
                    Some(listing) => {
                        listing.insert(key, pod);
                        Vec::new()
                    }
                    None if self.own.get(&key) == Some(&pod) => Vec::new(),
                    None => {
                        self.own.insert(key, pod);
                        self.dirty = true;
                        vec![self.own_pods()]
                    }
                }
            }
            ObjectEvent::Remove(reference) if reference.kind == Kind::Pod => {
                self.forget_own(&PodKey::new(reference.namespace, reference.name))
            }
            other => vec![other],
        }
    }

    fn forget_own(&mut self, key: &PodKey) -> Vec<ObjectEvent> {
        if let Some(listing) = self.own_listing.as_mut() {
            listing.remove(key);
            return Vec::new();
        }
        if self.own.remove(key).is_some() {
            self.dirty = true;
            vec![self.own_pods()]
        } else {
            Vec::new()
        }
    }

    fn own_pods(&self) -> ObjectEvent {
        ObjectEvent::NodePods {
            node: self.node.clone(),
            pods: self.own.values().cloned().collect(),
            refused: Vec::new(),
        }
    }

    fn on_batch(&mut self, event: BatchEvent) -> Vec<ObjectEvent> {
        match event {
            BatchEvent::ListStart => {
                self.held_back.clear();
                vec![ObjectEvent::ListStart(Kind::Pod)]
            }
            BatchEvent::ListDone => {
                self.batches_done_waiting = true;
                self.finish_list(false)
            }
            BatchEvent::Upsert { node, .. }
            | BatchEvent::Unreadable { node, .. }
            | BatchEvent::Remove(node)
                if node == self.node =>
            {
                Vec::new()
            }
            BatchEvent::Upsert { node, content } => vec![self.read_batch(node, content)],
            BatchEvent::Unreadable { node, error } => {
                self.held_back.remove(&node);
                vec![ObjectEvent::BatchRefused { node, error }]
            }
            BatchEvent::Remove(node) => {
                self.held_back.remove(&node);
                vec![ObjectEvent::NodePods {
                    node,
                    pods: Vec::new(),
                    refused: Vec::new(),
                }]
            }
        }
    }

    fn read_batch(&mut self, node: String, content: Vec<u8>) -> ObjectEvent {
        let decoded = match endpoint_batch::decode_interned(&content, &node, &mut self.interner) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.held_back.remove(&node);
                return ObjectEvent::BatchRefused {
                    node,
                    error: error.to_string(),
                };
            }
        };
        let Some(cidrs) = (self.lookup)(&node) else {
            // Nothing vouches for its addresses (a node not known yet, or gone and its CIDRs
            // free for another): none of its pods stands meanwhile.
            self.held_back.insert(node.clone(), content);
            return ObjectEvent::NodePods {
                refused: vec![format!(
                    "node {node:?} has no known record with pod CIDRs: its endpoint batch is held back and tried again"
                )],
                node,
                pods: Vec::new(),
            };
        };
        self.held_back.remove(&node);
        let vetted = endpoint_batch::vet(decoded, &node, &cidrs);
        ObjectEvent::NodePods {
            node,
            pods: vetted.pods,
            refused: vetted.refused,
        }
    }

    /// Tries the held-back batches again; returns what those now vouched for make, then the
    /// end of the Pod list if it was waiting for them (or `force`: waited long enough).
    pub fn retry_held_back(&mut self, force: bool) -> Vec<ObjectEvent> {
        let held = std::mem::take(&mut self.held_back);
        let mut out = Vec::new();
        for (node, content) in held {
            if (self.lookup)(&node).is_some() {
                out.push(self.read_batch(node, content));
            } else {
                self.held_back.insert(node, content);
            }
        }
        out.extend(self.finish_list(force));
        out
    }

    /// The end of the Pod list, once both lists are complete and no batch is held back (or
    /// `force`).
    fn finish_list(&mut self, force: bool) -> Vec<ObjectEvent> {
        if self.batches_done_waiting && self.own_synced && (self.held_back.is_empty() || force) {
            self.batches_done_waiting = false;
            // This node's pods are sighted too: they are not in the batches' list.
            vec![self.own_pods(), ObjectEvent::ListDone(Kind::Pod)]
        } else {
            Vec::new()
        }
    }

    /// Whether the end of the Pod list waits for held-back batches.
    pub fn list_waiting(&self) -> bool {
        self.batches_done_waiting
    }

    /// Whether batches are held back.
    pub fn holding_back(&self) -> bool {
        !self.held_back.is_empty()
    }

    /// The content to write now, if the own pods changed, were listed, and differ from what
    /// was written last. Call [`PodIdentity::written`] once written.
    pub fn due(&mut self) -> Option<String> {
        if !self.dirty || !self.own_synced {
            return None;
        }
        let content = endpoint_batch::encode(&self.node, self.own.values());
        if self.published.as_ref() == Some(&content) {
            self.dirty = false;
            return None;
        }
        Some(content)
    }

    /// Whether a write may be due (the own pods changed since the last write).
    pub fn dirty(&self) -> bool {
        self.dirty && self.own_synced
    }

    /// `content` was written.
    pub fn written(&mut self, content: String) {
        if self.published.is_none() {
            tracing::info!(node = %self.node, pods = self.own.len(), "published this node's endpoint batch");
        }
        self.published = Some(content);
        self.dirty = false;
    }
}

/// Runs the stage for node `node` on `raw`, writing this node's batch with `write`; returns
/// the policy loop's events. Must be called in a Tokio runtime.
pub fn spawn(
    node: &str,
    mut raw: mpsc::Receiver<SourceEvent>,
    lookup: PodCidrLookup,
    write: BatchWriter,
) -> mpsc::Receiver<ObjectEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut stage = PodIdentity::new(node, lookup);
    tokio::spawn(async move {
        let mut write_at: Option<Instant> = None;
        let mut last_write: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        // Since when the end of the Pod list has waited for held-back batches.
        let mut list_waiting_since: Option<Instant> = None;
        loop {
            let wake = [write_at, retry_at].into_iter().flatten().min();
            let event = tokio::select! {
                () = tx.closed() => break,
                event = raw.recv() => match event {
                    Some(event) => Some(event),
                    None => break,
                },
                () = sleep_until(wake) => None,
            };
            let mut out = match event {
                Some(event) => stage.on_event(event),
                None => Vec::new(),
            };
            let now = Instant::now();
            if stage.list_waiting() {
                list_waiting_since.get_or_insert(now);
            } else {
                list_waiting_since = None;
            }
            if retry_at.is_some_and(|at| at <= now) {
                retry_at = None;
                let force = list_waiting_since.is_some_and(|since| now >= since + LIST_HOLD_MAX);
                if force {
                    tracing::warn!("some nodes' endpoint batches are still held back (no known record): the pod list ends without them");
                }
                out.extend(stage.retry_held_back(force));
            }
            if stage.holding_back() && retry_at.is_none() {
                retry_at = Some(now + RETRY);
            }
            for event in out {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if write_at.is_some_and(|at| at <= now) {
                write_at = None;
                if let Some(content) = stage.due() {
                    last_write = Some(now);
                    match write(content.clone()).await {
                        Ok(()) => stage.written(content),
                        Err(error) => {
                            tracing::warn!(%error, "writing this node's endpoint batch failed; retrying");
                            write_at = Some(Instant::now() + RETRY);
                        }
                    }
                }
            }
            if stage.dirty() && write_at.is_none() {
                let earliest = last_write.map_or(now, |at| at + MIN_INTERVAL);
                write_at = Some(earliest.max(now + DEBOUNCE));
            }
        }
        tracing::debug!("pod identity stage stopped");
    });
    rx
}

/// One stream of [`SourceEvent`]s from a registry's object watch and its batch watch; it ends
/// when both have ended or the receiver is dropped.
pub fn merge_sources(
    mut objects: mpsc::Receiver<ObjectEvent>,
    mut batches: mpsc::Receiver<BatchEvent>,
) -> mpsc::Receiver<SourceEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let (mut objects_open, mut batches_open) = (true, true);
        while objects_open || batches_open {
            let event = tokio::select! {
                () = tx.closed() => break,
                event = objects.recv(), if objects_open => match event {
                    Some(event) => SourceEvent::Object(event),
                    None => { objects_open = false; continue; }
                },
                event = batches.recv(), if batches_open => match event {
                    Some(event) => SourceEvent::Batch(event),
                    None => { batches_open = false; continue; }
                },
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    rx
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
