//! Kubernetes NetworkPolicy for meshd's eBPF datapath, the pure part: the policy model, a
//! reference evaluator, the compiler to BPF map contents (full and incremental) and a model of
//! the datapath's lookups. No I/O, no async, no Kubernetes client: callers feed it objects and
//! write the maps it returns.
//!
//! Modules:
//! * [`model`]: namespaces, pods and NetworkPolicies (all of `networking.k8s.io/v1`) as plain
//!   values; [`k8s`] converts the Kubernetes API objects into them, refusing what cannot be
//!   represented with an error naming the object and field.
//! * [`mod@reference`]: [`reference::allowed`], the API's semantics written the slow obvious way.
//! * [`maps`]: the BPF maps' key and value types (`#[repr(C)]`, byte layouts documented) and
//!   their contents and deltas.
//! * [`mod@compile`]: policies, pods, namespaces and local endpoints → map contents.
//! * [`incremental`]: [`Compiler`], which takes one change at a time and returns the map delta
//!   touching only the endpoints whose entries change.
//! * [`update`]: the order to write a delta into live maps so that no intermediate state
//!   admits more than the old or the new maps.
//! * [`datapath_model`]: evaluates a packet against map contents exactly as the tc program will.
//! * [`prefix`]: port ranges as prefixes and the longest-prefix construction the tries rely on.
//! * [`e2e_model`]: the upstream e2e suite's model (namespaces x, y, z; pods a, b, c) for tests.
#![forbid(unsafe_code)]

/// Policies, pods, namespaces and local endpoints → BPF map contents.
pub mod compile;
/// The tc program's lookups, modelled over map contents.
pub mod datapath_model;
/// The upstream e2e suite's model world and truth tables.
pub mod e2e_model;
/// The incremental compiler: one change in, the map delta out.
pub mod incremental;
/// Conversion from the Kubernetes API objects.
pub mod k8s;
/// BPF map key/value layouts, map contents and deltas.
pub mod maps;
/// Namespaces, pods and NetworkPolicies as plain values.
pub mod model;
/// Port ranges as prefixes; the longest-prefix construction.
pub mod prefix;
/// The reference evaluator, written plainly from the API documentation.
pub mod reference;
/// The safe order to write a delta into live maps.
pub mod update;

pub use compile::{compile, CompileError, Compiled};
pub use incremental::{Change, Compiler};
pub use maps::{EndpointId, MapDelta, PolicyMaps};
pub use model::World;
