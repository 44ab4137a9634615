//! What meshd's tests share, in one place: the requirement that a test runs as root and finds
//! the tools it needs ([`require`]), and guards that own a network namespace or a child process
//! for a test's lifetime ([`netns`]).
//!
//! A test that cannot run is never counted as passed: a missing requirement panics with a
//! message naming what is missing, on a developer's machine and under `CI=true` alike.

#![forbid(unsafe_code)]

pub mod netns;
pub mod require;
pub mod seeds;

pub use netns::{unique_name, ChildGuard, NetnsGuard, NetnsSet};
pub use require::{require_root, require_tool, require_tools};
