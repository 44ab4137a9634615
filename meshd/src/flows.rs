//! Flow observability: what the datapath's programs saw, as flow events with verdicts and
//! reasons, kept in a bounded history and served on the control socket.
//!
//! * [`record`]: the flow record and the stream line ([`record::FlowsResponse`]), the contract
//!   between the daemon and `meshctl observe` (pure).
//! * [`filter`], [`render`]: `meshctl observe`'s filter flags and its table (pure).
//! * [`graph`]: `meshctl graph`'s DOT of the mesh, from status reports (pure).
//!
//! Control socket protocol (see [`crate::control`]): the request line `flows` answers the
//! history, oldest first, one [`record::FlowsResponse`] JSON object per line, then EOF;
//! `flows follow` answers the same history and then every new line as it is decoded, until the
//! client closes. Lost events are never silent: a `lost_events` line says how many were lost
//! and where (the BPF ring buffer was full, or this follower was too slow). Filtering is the
//! client's.
//!
//! Prometheus metrics of flows (names the Grafana dashboard in deploy/ queries):
//! `meshd_flow_drops_total{reason,direction}`, `meshd_flow_forwarded_packets_total{peer_node}`,
//! `meshd_flow_forwarded_bytes_total{peer_node}`,
//! `meshd_flows_total{source_namespace,destination_namespace,verdict}` (bounded cardinality,
//! overflow counted under `other`), `meshd_flow_events_lost_total{source}`.

pub mod aggregate;
pub mod collector;
pub mod daemon;
pub mod decode;
pub mod enrich;
/// Which lines `meshctl observe` shows: its filter flags, checked, and `--last` (pure).
pub mod filter;
pub mod flow_metrics;
/// The mesh as a Graphviz graph from status reports (`meshctl graph`; pure).
pub mod graph;
pub mod history;
pub mod record;
/// The one-line-per-flow table of `meshctl observe` (pure).
pub mod render;

#[cfg(test)]
mod fixtures;
