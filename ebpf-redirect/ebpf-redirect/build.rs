//! Builds the BPF object (`ebpf-redirect-ebpf`) for `bpfel-unknown-none` and places it at
//! `$OUT_DIR/ebpf-redirect.bpf.o` for `include_bytes_aligned!`.
//!
//! * `EBPF_REDIRECT_OBJ=/path/to/prebuilt.o` skips the nested build and uses that object.
//! * Otherwise runs `cargo build --release --locked` in `../ebpf-redirect-ebpf` with
//!   Debian's rustc (`EBPF_REDIRECT_RUSTC`, default `/usr/bin/rustc`) and
//!   `RUSTC_BOOTSTRAP=1` (no build-std: core comes from `libstd-rust-web-dev-bpf`).
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("ebpf-redirect.bpf.o");
    println!("cargo:rerun-if-env-changed=EBPF_REDIRECT_OBJ");
    println!("cargo:rerun-if-env-changed=EBPF_REDIRECT_RUSTC");

    if let Some(obj) = env::var_os("EBPF_REDIRECT_OBJ") {
        println!("cargo:rerun-if-changed={}", PathBuf::from(&obj).display());
        std::fs::copy(&obj, &out).expect("copy EBPF_REDIRECT_OBJ");
        return;
    }

    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("crate lives in ebpf-redirect/");
    let ebpf = root.join("ebpf-redirect-ebpf");
    for p in [
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        ebpf.join("Cargo.lock"),
        ebpf.join(".cargo/config.toml"),
        root.join("ebpf-redirect-common/src"),
        root.join("ebpf-redirect-common/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let rustc = env::var("EBPF_REDIRECT_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1");
    // Do not leak the host build's settings into the BPF build.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_FEATURE_")
            || k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_PKG_")
            || matches!(
                k.as_str(),
                "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "CARGO_ENCODED_RUSTFLAGS"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_MAKEFLAGS"
                    | "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "RUSTDOC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect(
        "spawn cargo for the BPF crate (is bpf-linker installed? run install-toolchain.sh)",
    );
    assert!(
        status.success(),
        "building ebpf-redirect-ebpf failed (run ../install-toolchain.sh)"
    );
    let obj = ebpf.join("target/bpfel-unknown-none/release/ebpf-redirect-ebpf");
    std::fs::copy(&obj, &out).expect("copy BPF object");
}
