//! The one way a test states what it needs: root, or a tool on `PATH`. A missing requirement
//! fails the test with a message naming it; it never returns early as if the test had passed.

use std::path::Path;

/// Whether the effective user is root (network namespaces, BPF, tcpdump need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `tool` is an executable file in one of `PATH`'s directories.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool))))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The message a missing requirement fails with.
fn missing(what: &str) -> String {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let hint = if ci {
        "CI must install it (scripts/install-deps.sh)"
    } else {
        "run scripts/install-deps.sh as root"
    };
    format!("this test needs {what}: {hint}; a test that cannot run fails, it is never skipped")
}

/// Fails the calling test unless it runs as root.
#[track_caller]
pub fn require_root() {
    assert!(is_root(), "{}", missing("root (network namespaces, BPF)"));
}

/// Fails the calling test unless `tool` is on `PATH`.
#[track_caller]
pub fn require_tool(tool: &str) {
    assert!(on_path(tool), "{}", missing(&format!("`{tool}` on PATH")));
}

/// Root, and every tool in `tools`.
#[track_caller]
pub fn require_tools(tools: &[&str]) {
    require_root();
    for tool in tools {
        require_tool(tool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_on_path_and_a_made_up_tool_is_not() {
        assert!(on_path("sh"));
        assert!(!on_path("meshd-no-such-tool-7f3a"));
    }

    #[test]
    #[should_panic(expected = "never skipped")]
    fn a_missing_tool_fails_the_test() {
        require_tool("meshd-no-such-tool-7f3a");
    }

    #[test]
    fn the_message_names_what_is_missing() {
        assert!(missing("`tcpdump` on PATH").contains("`tcpdump` on PATH"));
    }
}
