//! `meshd-cni`: the meshd CNI plugin, run by the container runtime.
//!
//! Reads the network configuration on stdin and the `CNI_*` environment, prints the spec's
//! result or error JSON on stdout and exits 0 or 1 (see the `meshd_cni` library).
//!
//! `meshd-cni --delete-link INDEX` is the plugin's own helper: DEL starts it to delete the
//! pod's veth pair and returns without waiting for the kernel to free it
//! (`meshd_cni::datapath::del`). A runtime never passes arguments.

use std::io::{Read, Write};

fn main() {
    // One thread, from start to exit: DEL may fork its link deleter.
    meshd_cni::link_deleter::declare_single_threaded();
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(meshd_cni::datapath::DELETE_LINK_ARG) {
        std::process::exit(meshd_cni::datapath::delete_link_helper(args.next()));
    }
    let mut stdin = Vec::new();
    // One byte past the limit is enough to refuse an oversized configuration without
    // reading it all.
    let limit = meshd_cni::MAX_STDIN_BYTES as u64 + 1;
    let outcome = match std::io::stdin().take(limit).read_to_end(&mut stdin) {
        Ok(_) => meshd_cni::plugin::run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => meshd_cni::plugin::Outcome {
            stdout: serde_json::to_string(
                &meshd_cni::CniError::Io(format!("reading stdin: {e}"))
                    .to_result(meshd_cni::LATEST_VERSION),
            )
            .unwrap_or_default(),
            exit_code: 1,
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    if !outcome.stdout.is_empty() {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
