//! Kubernetes NetworkPolicy for meshd's eBPF datapath, the pure part: the policy model, a
//! reference evaluator, the compiler to BPF map contents (full and incremental) and a model of
//! the datapath's lookups. No I/O, no async, no Kubernetes client: callers feed it objects and
//! write the maps it returns.
//!
//! Modules:
//! * [`intern`]: shared names and label sets ([`intern::Name`], [`intern::SharedLabels`]) and
//!   the interner that makes equal ones one copy (a remote pod costs little beyond its own name).
//! * [`ipcache`]: other nodes' pods as an address → identity table (identity = namespace,
//!   labels and named ports, interned once), kept per node as sorted entries; no pod objects.
//! * [`model`]: namespaces, pods and NetworkPolicies (all of `networking.k8s.io/v1`) as plain
//!   values; [`k8s`] converts the Kubernetes API objects into them, refusing what cannot be
//!   represented with an error naming the object and field. [`pods`]: the world's pods by key,
//!   held as the shared pods alone (no copy of the key beside each).
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

pub mod compile;
pub mod datapath_model;
pub mod e2e_model;
pub mod incremental;
pub mod intern;
pub mod ipcache;
pub mod k8s;
pub mod maps;
pub mod model;
pub mod pods;
pub mod prefix;
pub mod reference;
pub mod update;

pub use compile::{compile, CompileError, Compiled};
pub use incremental::{Change, Compiler};
pub use maps::{EndpointId, MapDelta, PolicyMaps};
pub use model::World;
