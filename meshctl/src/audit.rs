//! `meshctl audit`: the compliance audit of a lab or (`--cluster`) of a Kubernetes cluster.

use std::process::ExitCode;

use meshd::audit::{self, Policy};
use meshd::registry::kube::audit_source::cluster_views;

use crate::cli::{AuditArgs, Output};

/// Audit; exit 0: pass, 1: findings, 2: could not audit.
pub(crate) fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let AuditArgs {
        lab,
        cluster,
        kubeconfig,
        status_port,
        evidence,
        max_key_age_days,
        plaintext_window,
        output,
        all,
    } = args;
    let policy = Policy {
        max_key_age: std::time::Duration::from_secs(max_key_age_days * 24 * 3600),
        plaintext_window,
    };
    let report = if cluster {
        if evidence {
            eprintln!("meshctl audit: --evidence needs pods to send canaries from; it runs against the lab only");
            return Ok(ExitCode::from(2));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match rt.block_on(cluster_views(kubeconfig.as_deref(), status_port)) {
            Ok(views) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                Ok(audit::audit(&views, &policy, now))
            }
            Err(e) => Err(e),
        }
    } else {
        meshd_lab::evidence::audit_lab(&lab, &policy, evidence)
    };
    let report = match report {
        Ok(r) => r,
        Err(err) => {
            eprintln!("meshctl audit: could not audit: {err:#}");
            return Ok(ExitCode::from(2));
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!(
            "{}",
            audit::table_bounded(
                &report,
                (!all).then_some(meshd::control::summary::LIST_LIMIT)
            )
        ),
    }
    Ok(ExitCode::from(report.exit_code()))
}
