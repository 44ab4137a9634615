//! The meshd daemon (reconcile loop, control socket), the `meshctl` operator CLI and the lab.
