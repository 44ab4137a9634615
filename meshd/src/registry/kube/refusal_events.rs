//! `RecordRefused` Events: every record this node's record trust refuses is reported as a core
//! v1 `Event` regarding the refused `Node` (in `default`, where the Events of cluster-scoped
//! objects live and `kubectl describe node` finds them), with a message naming the field and
//! what was wrong.
//!
//! [`EventBook`] decides (pure, clocked by the caller): a refusal is reported once when it
//! appears; while it stays, it is reported again (the Event's `count` and `lastTimestamp`
//! patched) at most every [`Limits::repeat_after`], never once per reconcile pass; a refusal
//! that goes away and comes back is new. A token bucket ([`Limits::burst`],
//! [`Limits::refill`]) bounds the writes of a node however many hostile Nodes appear at once:
//! what does not fit waits for the next tick. [`spawn`] follows meshd's status (its `refused`
//! list) and writes what the book says, off the reconcile loop: a slow or silent API server
//! delays Events, never a pass.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::control::{RefusalReport, StatusReport};

/// The Events' reason.
pub const REASON: &str = "RecordRefused";
/// The namespace of Events about Nodes (cluster-scoped objects).
pub const EVENT_NAMESPACE: &str = "default";
/// The `reportingComponent` and `source.component` of the Events.
pub const COMPONENT: &str = "meshd";
/// An Event's message is cut to this many bytes (the API's own limit is 1 KiB for `note`).
const MAX_MESSAGE: usize = 1024;

/// How often Events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A refusal still in force is reported again after this long (the Event's count grows).
    pub repeat_after: Duration,
    /// At most this many writes at once...
    pub burst: u32,
    /// ...and one more every `refill`.
    pub refill: Duration,
}

impl Default for Limits {
    /// Again every 10 minutes; 10 writes at once, then one every 6 s.
    fn default() -> Self {
        Self {
            repeat_after: Duration::from_secs(600),
            burst: 10,
            refill: Duration::from_secs(6),
        }
    }
}

/// One write the book asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventWrite {
    /// A refusal seen for the first time: create its Event.
    Create {
        /// The Event's name.
        name: String,
        /// The refused Node.
        node: String,
        /// The Event's message.
        message: String,
    },
    /// A refusal still in force after [`Limits::repeat_after`]: patch its Event.
    Repeat {
        /// The Event's name.
        name: String,
        /// The Event's message.
        message: String,
        /// How many times it has been reported, this one included.
        count: i32,
    },
}

/// What identifies a refusal: the node, the field and the reason.
type RefusalKey = (String, String, String);

#[derive(Debug)]
struct Reported {
    count: i32,
    last: Instant,
}

/// Which refusals to report when (see the module docs).
#[derive(Debug)]
pub struct EventBook {
    reporter: String,
    limits: Limits,
    reported: HashMap<RefusalKey, Reported>,
    tokens: u32,
    refilled: Instant,
}

impl EventBook {
    /// A book for the meshd of node `reporter`, starting with a full bucket at `now`.
    pub fn new(reporter: impl Into<String>, limits: Limits, now: Instant) -> Self {
        Self {
            reporter: reporter.into(),
            limits,
            reported: HashMap::new(),
            tokens: limits.burst,
            refilled: now,
        }
    }

    /// The writes due at `now` for the refusals in force `refused`.
    pub fn due(&mut self, refused: &[RefusalReport], now: Instant) -> Vec<EventWrite> {
        let in_force: Vec<RefusalKey> = refused.iter().map(key).collect();
        self.reported.retain(|k, _| in_force.contains(k));
        self.refill(now);
        let mut writes = Vec::new();
        for (refusal, k) in refused.iter().zip(in_force) {
            if self.tokens == 0 {
                break;
            }
            let message = message(&self.reporter, refusal);
            let name = event_name(&self.reporter, &k);
            match self.reported.get_mut(&k) {
                None => {
                    writes.push(EventWrite::Create {
                        name,
                        node: refusal.node.clone(),
                        message,
                    });
                    self.reported.insert(
                        k,
                        Reported {
                            count: 1,
                            last: now,
                        },
                    );
                }
                Some(r) if now.duration_since(r.last) >= self.limits.repeat_after => {
                    r.count = r.count.saturating_add(1);
                    r.last = now;
                    writes.push(EventWrite::Repeat {
                        name,
                        message,
                        count: r.count,
                    });
                }
                Some(_) => continue,
            }
            self.tokens -= 1;
        }
        writes
    }

    /// A write that failed: its refusal is due again at the next call.
    pub fn failed(&mut self, write: &EventWrite) {
        match write {
            EventWrite::Create { name, .. } => self
                .reported
                .retain(|k, _| event_name(&self.reporter, k) != *name),
            EventWrite::Repeat { name, .. } => {
                for (k, r) in &mut self.reported {
                    if event_name(&self.reporter, k) == *name {
                        r.count -= 1;
                        r.last = r
                            .last
                            .checked_sub(self.limits.repeat_after)
                            .unwrap_or(r.last);
                    }
                }
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        let refill = self.limits.refill.max(Duration::from_millis(1));
        let earned = now.duration_since(self.refilled).as_nanos() / refill.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.limits.burst);
            self.refilled = now;
        }
    }
}

fn key(r: &RefusalReport) -> RefusalKey {
    (r.node.clone(), r.field.clone(), r.reason.clone())
}

/// The Event's message: who refused what and why, cut to [`MAX_MESSAGE`].
fn message(reporter: &str, r: &RefusalReport) -> String {
    let mut text = format!(
        "meshd on node {reporter} refuses this Node's record: field {}: {}",
        r.field, r.reason
    );
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A stable name per reporter and refusal (so a restarted meshd finds its Event again):
/// the refused node's name (cut so the whole stays a valid name) and a 64-bit FNV-1a hash.
fn event_name(reporter: &str, (node, field, reason): &RefusalKey) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [reporter, node, field, reason] {
        for b in part.bytes().chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut prefix: String = node.chars().take(200).collect();
    while prefix.ends_with(['.', '-']) {
        prefix.pop();
    }
    format!("{prefix}.meshd-refused.{hash:016x}")
}

/// Writes one Event; a `Create` whose Event already exists (a restarted meshd) becomes a patch.
async fn write(api: &Api<Event>, reporter: &str, w: &EventWrite) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = |message: &str, count: Option<i32>| {
        let mut p = json!({"message": message, "lastTimestamp": now});
        if let Some(count) = count {
            p["count"] = json!(count);
        }
        p
    };
    match w {
        EventWrite::Create {
            name,
            node,
            message,
        } => {
            let event: Event = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": EVENT_NAMESPACE},
                "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node},
                "reason": REASON,
                "message": message,
                "type": "Warning",
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": COMPONENT, "host": reporter},
                "reportingComponent": COMPONENT,
                "reportingInstance": reporter,
            }))
            .unwrap_or_else(|e| unreachable!("a well-formed Event: {e}"));
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.is_already_exists() => api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(patch(message, None)),
                    )
                    .await
                    .map(drop),
                Err(e) => Err(e),
            }
        }
        EventWrite::Repeat {
            name,
            message,
            count,
        } => api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(patch(message, Some(*count))),
            )
            .await
            .map(drop),
    }
}

/// Follow `status` and report its refusals as Events with the default [`Limits`], until the
/// channel closes.
pub fn spawn<P: Send + Sync + 'static>(
    client: Client,
    reporter: String,
    status: watch::Receiver<Option<StatusReport<P>>>,
) -> tokio::task::JoinHandle<()> {
    spawn_with(client, reporter, status, Limits::default())
}

/// [`spawn`] with other limits (tests shorten them).
pub fn spawn_with<P: Send + Sync + 'static>(
    client: Client,
    reporter: String,
    mut status: watch::Receiver<Option<StatusReport<P>>>,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Event> = Api::namespaced(client, EVENT_NAMESPACE);
        let mut book = EventBook::new(reporter.clone(), limits, Instant::now());
        let tick = limits
            .refill
            .min(limits.repeat_after)
            .min(Duration::from_secs(5));
        loop {
            let refused = status
                .borrow_and_update()
                .as_ref()
                .map(|s| s.refused.clone())
                .unwrap_or_default();
            for w in book.due(&refused, Instant::now()) {
                match write(&api, &reporter, &w).await {
                    Ok(()) => tracing::debug!(event = ?w, "RecordRefused Event written"),
                    Err(err) => {
                        tracing::warn!(%err, "writing a RecordRefused Event failed; retrying");
                        book.failed(&w);
                    }
                }
            }
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(tick) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(node: &str, reason: &str) -> RefusalReport {
        RefusalReport {
            node: node.into(),
            field: "podCIDRs".into(),
            reason: reason.into(),
            holder: None,
        }
    }

    #[test]
    fn a_refusal_is_reported_once_then_again_only_after_the_window() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut book = EventBook::new("n1", limits, t0);
        let evil = [refusal(
            "evil",
            "0.0.0.0/0: prefix length /0 is outside /8../32",
        )];
        let first = book.due(&evil, t0);
        let [EventWrite::Create {
            name,
            node,
            message,
        }] = &first[..]
        else {
            panic!("{first:?}")
        };
        assert_eq!(node, "evil");
        assert!(name.starts_with("evil.meshd-refused."), "{name}");
        assert!(
            message.contains("field podCIDRs") && message.contains("0.0.0.0/0"),
            "{message}"
        );
        // Every pass within the window: nothing.
        for s in 1..600 {
            assert!(book.due(&evil, t0 + Duration::from_secs(s)).is_empty());
        }
        let later = book.due(&evil, t0 + limits.repeat_after);
        assert!(
            matches!(&later[..], [EventWrite::Repeat { count: 2, name: n, .. }] if n == name),
            "{later:?}"
        );
        // Gone, then back: new.
        assert!(book.due(&[], t0 + limits.repeat_after * 2).is_empty());
        let back = book.due(&evil, t0 + limits.repeat_after * 2);
        assert!(matches!(&back[..], [EventWrite::Create { .. }]), "{back:?}");
        // A failed write is due again.
        book.failed(&back[0]);
        assert_eq!(book.due(&evil, t0 + limits.repeat_after * 2).len(), 1);
    }

    #[test]
    fn a_flood_of_refusals_is_written_at_the_bucket_rate() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut book = EventBook::new("n1", limits, t0);
        let flood: Vec<RefusalReport> = (0..100)
            .map(|i| refusal(&format!("evil{i}"), "overlaps"))
            .collect();
        assert_eq!(book.due(&flood, t0).len(), 10);
        assert!(book.due(&flood, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(book.due(&flood, t0 + limits.refill).len(), 1);
        assert_eq!(book.due(&flood, t0 + limits.refill * 5).len(), 4);
        // Each refusal once: 100 writes in all, then nothing until the window.
        let mut total = 15;
        let mut t = t0 + limits.refill * 5;
        while total < 100 {
            t += limits.refill * 10;
            total += book.due(&flood, t).len();
        }
        assert_eq!(total, 100);
        assert!(book.due(&flood, t + limits.refill).is_empty());
    }

    #[test]
    fn names_are_stable_valid_and_distinct_per_reporter_and_reason() {
        let k = key(&refusal("evil", "a"));
        assert_eq!(event_name("n1", &k), event_name("n1", &k));
        assert_ne!(event_name("n1", &k), event_name("n2", &k));
        assert_ne!(
            event_name("n1", &k),
            event_name("n1", &key(&refusal("evil", "b")))
        );
        let long = "a".repeat(253);
        let name = event_name("n1", &key(&refusal(&long, "a")));
        assert!(name.len() <= 253 && keyexchange::record::is_dns1123_subdomain(&name));
        let text = message("n1", &refusal("evil", &"x".repeat(5000)));
        assert!(text.len() <= MAX_MESSAGE && text.ends_with("..."));
    }
}
