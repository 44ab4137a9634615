//! The build script of meshd and wgdp (their `build` key names it): links their binaries with
//! packed relative relocations (`-z pack-relative-relocs`, glibc's DT_RELR; glibc 2.36+ and
//! binutils 2.38+, and the image is Debian 12 with glibc 2.36). A PIE's relocation table is
//! read whole at every start, so with one 24-byte `.rela.dyn` entry per pointer (40,000 to
//! 53,000 in meshd, 13,000 in meshd-wg) it stays resident; packed, it is a few KiB. Only for
//! dynamically linked Linux glibc builds (static `+crt-static` builds keep plain relocations);
//! `MESHD_NO_RELR=1` turns it off (for an older toolchain or C library).

fn main() {
    println!("cargo:rerun-if-env-changed=MESHD_NO_RELR");
    let cfg = |name: &str| std::env::var(name).unwrap_or_default();
    let linux_gnu = cfg("CARGO_CFG_TARGET_OS") == "linux" && cfg("CARGO_CFG_TARGET_ENV") == "gnu";
    // Static builds (the kernel_vm guest's, `+crt-static`) keep plain relocations.
    let dynamic = !cfg("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    if linux_gnu && dynamic && std::env::var_os("MESHD_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
