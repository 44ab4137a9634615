//! Publishing this node's record off the reconcile loop: a task of its own writes the latest
//! record it was handed, retrying with backoff until it lands. The loop only hands records
//! over ([`Publisher::publish`] never waits), so an API server that accepts connections and
//! never answers delays the record, never a pass, the status or the mesh.
//!
//! Latest wins: a record handed over while an earlier one is being written replaces it (the
//! write in flight is abandoned; publishing is idempotent, and every record carries the whole
//! state, so skipping one that was superseded loses nothing). What landed is watchable
//! ([`Publisher::landed`]): a key rotation takes its next step only once the record of the
//! last one is in the registry, or peers could meet a replaced key whose drain they never saw.

use std::sync::Arc;
use std::time::Duration;

use keyexchange::NodeRecord;
use tokio::sync::watch;

use crate::registry::Registry;

/// First delay before retrying a failed write; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The handle of the publishing task (see the module docs); dropping it stops the task.
pub(super) struct Publisher {
    wanted: watch::Sender<Option<NodeRecord>>,
    landed: watch::Receiver<Option<NodeRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Starts the task publishing through `registry`.
    pub(super) fn spawn<R: Registry>(registry: Arc<R>) -> Self {
        let (wanted, mut rx) = watch::channel::<Option<NodeRecord>>(None);
        let (landed_tx, landed) = watch::channel::<Option<NodeRecord>>(None);
        let task = tokio::spawn(async move {
            // Whether a newer record arrived while the last one was being written.
            let mut newer = false;
            loop {
                if !newer && rx.changed().await.is_err() {
                    return;
                }
                newer = false;
                let Some(record) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let mut delay = RETRY_FIRST;
                loop {
                    let result = tokio::select! {
                        result = registry.publish(&record) => result,
                        // A newer record: abandon this write, take that one.
                        changed = rx.changed() => {
                            newer = changed.is_ok();
                            break;
                        }
                    };
                    match result {
                        Ok(()) => {
                            tracing::info!(node = %record.name, "record published");
                            landed_tx.send_replace(Some(record.clone()));
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(%err, retry_in = ?delay, "publishing this node's record failed; retrying");
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        changed = rx.changed() => {
                            newer = changed.is_ok();
                            break;
                        }
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        });
        Self {
            wanted,
            landed,
            task,
        }
    }

    /// The last record written to the registry (`None` before the first write lands).
    pub(super) fn landed(&self) -> watch::Receiver<Option<NodeRecord>> {
        self.landed.clone()
    }

    /// Hands `record` over to be published; returns at once.
    pub(super) fn publish(&self, record: NodeRecord) {
        self.wanted.send_replace(Some(record));
    }

    /// Stops the task (a write in flight is abandoned): nothing is published after this.
    pub(super) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::registry::{RegistryError, RegistryEvent};

    /// A registry whose writes hang while `hang` is set, and that records what it wrote.
    #[derive(Default)]
    struct Stuck {
        hang: Mutex<bool>,
        written: Mutex<Vec<u16>>,
    }

    impl Registry for Stuck {
        async fn publish(&self, record: &NodeRecord) -> Result<(), RegistryError> {
            if *self.hang.lock().unwrap() {
                std::future::pending::<()>().await;
            }
            self.written.lock().unwrap().push(record.listen_port);
            Ok(())
        }

        async fn withdraw(&self, _: &str) -> Result<(), RegistryError> {
            Ok(())
        }

        fn watch(&self) -> Result<tokio::sync::mpsc::Receiver<RegistryEvent>, RegistryError> {
            Ok(tokio::sync::mpsc::channel(1).1)
        }

        fn watch_policy_objects(
            &self,
            _: &str,
        ) -> Result<tokio::sync::mpsc::Receiver<crate::policy::objects::ObjectEvent>, RegistryError>
        {
            Ok(tokio::sync::mpsc::channel(1).1)
        }

        fn policy_source(&self) -> &'static str {
            "test"
        }
    }

    fn record(port: u16) -> NodeRecord {
        NodeRecord {
            name: "n1".into(),
            public_key: keyexchange::PublicKey::from_bytes([1; 32]),
            listen_port: port,
            endpoints: vec!["192.0.2.1".parse().unwrap()],
            pod_cidrs: vec![],
            rotation: Default::default(),
        }
    }

    async fn until_written(registry: &Stuck, want: &[u16]) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while *registry.written.lock().unwrap() != want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never wrote {want:?}: {:?}", registry.written));
    }

    #[tokio::test]
    async fn a_hanging_registry_never_blocks_the_caller_and_the_latest_record_wins() {
        let registry = Arc::new(Stuck::default());
        *registry.hang.lock().unwrap() = true;
        let publisher = Publisher::spawn(registry.clone());
        let landed = publisher.landed();
        let started = std::time::Instant::now();
        for port in 1..=100 {
            publisher.publish(record(port));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(registry.written.lock().unwrap().is_empty());
        assert!(
            landed.borrow().is_none(),
            "nothing landed while the server hangs"
        );
        // The server answers again: only the latest record is written.
        *registry.hang.lock().unwrap() = false;
        publisher.publish(record(101));
        until_written(&registry, &[101]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*registry.written.lock().unwrap(), vec![101]);
        assert_eq!(landed.borrow().as_ref().map(|r| r.listen_port), Some(101));
        publisher.stop().await;
    }
}
