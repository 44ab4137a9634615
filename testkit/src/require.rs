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

/// What is missing, and what makes it present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing<'a> {
    /// The test does not run as root.
    Root,
    /// A tool is not on `PATH`.
    Tool(&'a str),
}

/// The message a missing requirement fails with; `ci` when running under `CI=true`.
fn missing(what: Missing<'_>, ci: bool) -> String {
    let (needs, hint) = match (what, ci) {
        (Missing::Root, false) => (
            "root (network namespaces, BPF)".to_string(),
            "run the tests as root",
        ),
        (Missing::Root, true) => (
            "root (network namespaces, BPF)".to_string(),
            "CI must run the tests as root",
        ),
        (Missing::Tool(tool), false) => (
            format!("`{tool}` on PATH"),
            "run scripts/install-deps.sh as root",
        ),
        (Missing::Tool(tool), true) => (
            format!("`{tool}` on PATH"),
            "CI must install it (scripts/install-deps.sh)",
        ),
    };
    format!("this test needs {needs}: {hint}; a test that cannot run fails, it is never skipped")
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails the calling test unless it runs as root.
#[track_caller]
pub fn require_root() {
    assert!(is_root(), "{}", missing(Missing::Root, under_ci()));
}

/// Fails the calling test unless `tool` is on `PATH`.
#[track_caller]
pub fn require_tool(tool: &str) {
    assert!(
        on_path(tool),
        "{}",
        missing(Missing::Tool(tool), under_ci())
    );
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
    fn the_message_names_what_is_missing_and_how_to_get_it() {
        let tool = missing(Missing::Tool("tcpdump"), false);
        assert!(tool.contains("`tcpdump` on PATH"), "{tool}");
        assert!(tool.contains("scripts/install-deps.sh"), "{tool}");
        assert!(missing(Missing::Tool("tcpdump"), true).contains("CI must install it"));
        let root = missing(Missing::Root, false);
        assert!(root.contains("needs root") && root.contains("run the tests as root"));
        assert!(missing(Missing::Root, true).contains("CI must run the tests as root"));
        for ci in [false, true] {
            assert!(missing(Missing::Root, ci).ends_with("it is never skipped"));
        }
    }
}
