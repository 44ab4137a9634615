//! The live watcher of the `meshd-config` ConfigMap ([`spawn_watcher`]) and the Events it
//! records. What the keys mean and how they parse is [`crate::settings`] (pure).
//!
//! The watcher follows the ConfigMap through the Kubernetes API and publishes each new valid
//! configuration on a `tokio::sync::watch` channel. An invalid configuration is rejected with a
//! warning log line and a Kubernetes Event (reason [`INVALID_REASON`], the message naming key
//! and value) and the last good configuration stays in force. A deleted ConfigMap also leaves
//! the last good configuration in force (an accident must not flip encryption); a ConfigMap
//! that never existed means the fallback ([`WatcherConfig::fallback`]). With
//! [`WatcherConfig::state_dir`] every valid configuration applied is also saved as the last good
//! one ([`settings::save_last_good`]), which meshd starts from after a restart.
//!
//! Needs `list` and `watch` on `configmaps` (limited to `meshd-config` by the field selector)
//! and `create` on `events` (`events.k8s.io`) in meshd's namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

use super::WatchBackoff;
use crate::settings::{self, Settings, SettingsError};

/// The Event reason recorded when the ConfigMap holds an invalid value.
pub const INVALID_REASON: &str = "InvalidConfiguration";
/// First delay before re-establishing a failed watch (at most [`WatcherConfig::max_backoff`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// What [`spawn_watcher`] watches and where it records Events.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// The ConfigMap's namespace (meshd's own, e.g. `meshd-system`).
    pub namespace: String,
    /// The ConfigMap's name ([`settings::CONFIG_MAP_NAME`]).
    pub name: String,
    /// The object Events are recorded on ([`pod_reference`] or [`node_reference`]).
    pub regarding: ObjectReference,
    /// `reportingInstance` of the Events (the node name).
    pub instance: String,
    /// Longest delay between attempts to re-establish a failed watch.
    pub max_backoff: Duration,
    /// The settings published when the first read finds no ConfigMap or an invalid one
    /// ([`settings::fallback`]; default: [`Settings::default`]).
    pub fallback: Settings,
    /// Where each valid configuration is saved as the last good one ([`settings::save_last_good`]);
    /// `None`: nowhere.
    pub state_dir: Option<PathBuf>,
}

impl WatcherConfig {
    /// Watches `namespace/meshd-config`, recording Events on `regarding` as `instance`.
    pub fn new(namespace: &str, regarding: ObjectReference, instance: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: settings::CONFIG_MAP_NAME.to_string(),
            regarding,
            instance: instance.to_string(),
            max_backoff: Duration::from_secs(30),
            fallback: Settings::default(),
            state_dir: None,
        }
    }
}

/// A reference to meshd's own Pod (Events then live in meshd's namespace).
pub fn pod_reference(namespace: &str, name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: uid.map(str::to_string),
        ..ObjectReference::default()
    }
}

/// A reference to a Node (Events about cluster-scoped objects live in `default`).
pub fn node_reference(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// Follows the ConfigMap and publishes validated settings.
///
/// The channel holds `None` until the first list of the ConfigMap completed, then the
/// settings in force; it only changes when they do. The task stops when every receiver is
/// dropped. Must be called within a Tokio runtime.
pub fn spawn_watcher(client: Client, config: WatcherConfig) -> watch::Receiver<Option<Settings>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run_watcher(client, config, tx));
    rx
}

/// The watcher's memory.
struct State {
    config: WatcherConfig,
    client: Client,
    /// The data last looked at (valid or not), so re-lists of unchanged data do nothing.
    last_data: Option<BTreeMap<String, String>>,
    /// Whether the ConfigMap was part of the list in progress.
    listed: bool,
}

async fn run_watcher(client: Client, config: WatcherConfig, tx: watch::Sender<Option<Settings>>) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &config.namespace);
    let selector = format!("metadata.name={}", config.name);
    let first = FIRST_BACKOFF.min(config.max_backoff);
    let stream = watcher(api, watcher::Config::default().fields(&selector))
        .backoff(WatchBackoff::new(first, config.max_backoff));
    let mut stream = std::pin::pin!(stream);
    let mut state = State {
        config,
        client,
        last_data: None,
        listed: false,
    };
    loop {
        let event = tokio::select! {
            () = tx.closed() => break,
            event = stream.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Init)) => state.listed = false,
            Some(Ok(watcher::Event::InitApply(cm) | watcher::Event::Apply(cm))) => {
                state.listed = true;
                state.apply(&cm, &tx).await;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if !state.listed && tx.borrow().is_none() {
                    tracing::info!(configmap = %state.config.name, namespace = %state.config.namespace, settings = ?state.config.fallback, "no meshd ConfigMap; using the last good settings or the flags");
                }
                let fallback = state.config.fallback.clone();
                tx.send_if_modified(|current| {
                    if current.is_none() {
                        *current = Some(fallback);
                        true
                    } else {
                        false
                    }
                });
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                state.last_data = None;
                tracing::warn!(configmap = %state.config.name, namespace = %state.config.namespace, "meshd ConfigMap deleted; keeping the settings in force");
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "meshd ConfigMap watch failed; retrying with backoff");
            }
            None => break,
        }
    }
}

impl State {
    async fn apply(&mut self, cm: &ConfigMap, tx: &watch::Sender<Option<Settings>>) {
        let data = cm.data.clone().unwrap_or_default();
        if self.last_data.as_ref() == Some(&data) {
            return;
        }
        let unknown = Settings::unknown_keys(&data);
        if !unknown.is_empty() {
            tracing::warn!(
                ?unknown,
                "meshd ConfigMap has keys this meshd does not know; ignoring them"
            );
        }
        let result = Settings::from_data(&data);
        self.last_data = Some(data);
        match result {
            Ok(settings) => {
                if let Some(dir) = &self.config.state_dir {
                    if let Err(error) = settings::save_last_good(dir, &settings) {
                        tracing::warn!(%error, "could not save the settings as the last good ones");
                    }
                }
                tx.send_if_modified(|current| {
                    if current.as_ref() == Some(&settings) {
                        return false;
                    }
                    tracing::info!(?settings, "applying meshd settings");
                    *current = Some(settings);
                    true
                });
            }
            Err(error) => {
                tracing::warn!(%error, key = error.key(), value = error.value(), "rejecting invalid meshd configuration; the last good configuration stays in force");
                self.record(&error).await;
                let fallback = self.config.fallback.clone();
                tx.send_if_modified(|current| {
                    if current.is_none() {
                        tracing::info!(settings = ?fallback, "starting from the last good settings or the flags");
                        *current = Some(fallback);
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }

    /// Records the `InvalidConfiguration` Event. A new recorder each time: kube's recorder
    /// folds repeats of the same reason into one series and would keep the first message.
    async fn record(&self, error: &SettingsError) {
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "meshd".into(),
                instance: Some(self.config.instance.clone()),
            },
        );
        let configmap = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(self.config.namespace.clone()),
            name: Some(self.config.name.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: INVALID_REASON.into(),
            note: Some(format!(
                "{error}; the last good configuration stays in force"
            )),
            action: "ValidateConfiguration".into(),
            secondary: Some(configmap),
        };
        if let Err(e) = recorder.publish(&event, &self.config.regarding).await {
            tracing::warn!(error = %e, "recording the InvalidConfiguration Event failed");
        }
    }
}
