//! `lab exec`: run a command inside a node's network and mount namespaces (`meshctl` there
//! meaning this meshctl), and with a node root inside the image's root filesystem, as
//! `kubectl exec` into the DaemonSet's container would (`meshctl` there meaning the image's).

use std::process::{Command, ExitStatus};

use anyhow::Context as _;

use crate::nodes::node_index;
use crate::plan::node_ns;
use crate::state::{load_state, Paths};

/// `meshctl lab exec`: run a command inside a node (its network and mount namespaces).
pub fn exec(lab: &str, node: &str, command: &[String]) -> anyhow::Result<ExitStatus> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let paths = Paths::new(lab);
    let mut command = command.to_vec();
    if let Some(root) = &state.node_root {
        // The image has meshctl on its PATH.
        let mut chrooted = vec!["chroot".to_string(), root.to_string_lossy().into_owned()];
        chrooted.append(&mut command);
        command = chrooted;
    } else if command.first().map(String::as_str) == Some("meshctl") {
        // `meshctl` inside a node means this meshctl.
        command[0] = std::env::current_exe()
            .context("locating meshctl")?
            .to_string_lossy()
            .into_owned();
    }
    let cwd = std::env::current_dir().context("reading the working directory")?;
    Command::new("nsenter")
        .arg(format!("--mount={}", paths.mnt(i).display()))
        .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
        .arg(format!("--wd={}", cwd.display()))
        .arg("--")
        .args(&command)
        .status()
        .context("running nsenter")
}
