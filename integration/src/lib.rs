//! Harness for meshd's multi-node tests: drives the lab, generates traffic, analyses captures.
