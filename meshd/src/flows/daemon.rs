//! Flows in the daemon: what `meshd` starts from its `--flow-*` flags ([`FlowArgs`]): the
//! history served on the control socket ([`service`]) and the collector ([`start`]), or, with
//! `--flow-events=false`, the datapath's events switched off.

use std::path::Path;
use std::time::Duration;

use super::collector::{self, CollectorConfig, Sources};
use super::history::FlowHub;
use crate::control::FlowsService;
use crate::metrics::Metrics;
use crate::settings::FlowArgs;

/// The control socket's flow service, when flow events are on (the metrics' pair budgets set).
pub fn service(args: &FlowArgs, node_name: &str, metrics: &Metrics) -> Option<FlowsService> {
    if !args.flow_events {
        return None;
    }
    metrics
        .flows()
        .configure(args.flow_metrics_max_pairs, args.flow_metrics_pod_pairs);
    Some(FlowsService {
        hub: FlowHub::new(usize::try_from(args.flow_history).unwrap_or(usize::MAX)),
        metrics: metrics.clone(),
        node_name: node_name.to_string(),
    })
}

/// Starts the collector for `service` on the datapath pinned in `pin_dir`, or (no service)
/// switches the datapath's events off. Not fatal: a node without flow events still forwards.
pub fn start(
    args: &FlowArgs,
    pin_dir: &Path,
    service: Option<&FlowsService>,
    sources: Sources,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(service) = service else {
        let off = ebpf_redirect::FlowMaps::open(pin_dir).and_then(|mut m| m.set_events(false));
        if let Err(err) = off {
            tracing::warn!(error = %format!("{:#}", anyhow::Error::new(err)), "cannot switch flow events off in the datapath");
        }
        return None;
    };
    let config = CollectorConfig {
        pin_dir: pin_dir.to_path_buf(),
        node_name: service.node_name.clone(),
        report_every: Duration::from_secs(args.flow_report_secs),
        idle_after: Duration::from_secs(args.flow_idle_secs),
    };
    match collector::spawn(
        config,
        service.hub.clone(),
        service.metrics.clone(),
        sources,
    ) {
        Ok(task) => {
            tracing::info!(
                ring_bytes = args.flow_ring_bytes,
                history = args.flow_history,
                "flow events on"
            );
            Some(task)
        }
        Err(err) => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::new(err)), "flow events unavailable");
            None
        }
    }
}
