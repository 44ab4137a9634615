//! The certificates and keys a kube-apiserver needs, made with `openssl`: a CA, a serving
//! certificate for the addresses clients dial, and the RSA key pair that signs service-account
//! tokens. Test infrastructure: nothing here is meant for a real cluster.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors making the certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `openssl` could not be run at all.
    #[error("running openssl {step} (is openssl installed?)")]
    Spawn {
        /// Which file it was making.
        step: &'static str,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// `openssl` ran and failed.
    #[error("openssl {step} failed: {stderr}")]
    Failed {
        /// Which file it was making.
        step: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// Writing the extension file failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The files [`make`] wrote.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA certificate clients trust (PEM).
    pub ca_cert: PathBuf,
    /// The serving certificate (PEM).
    pub serving_cert: PathBuf,
    /// Its key (PEM).
    pub serving_key: PathBuf,
    /// The service-account token signing key (PEM, RSA private).
    pub sa_key: PathBuf,
    /// Its public half (PEM).
    pub sa_pub: PathBuf,
}

fn openssl(step: &'static str, args: &[&str]) -> Result<(), PkiError> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|source| PkiError::Spawn { step, source })?;
    if !out.status.success() {
        return Err(PkiError::Failed {
            step,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The `subjectAltName` value for `addresses` (and always `localhost`, `127.0.0.1`).
pub fn subject_alt_names(addresses: &[IpAddr]) -> String {
    let mut names = vec!["DNS:localhost".to_string(), "IP:127.0.0.1".to_string()];
    for a in addresses {
        let entry = format!("IP:{a}");
        if !names.contains(&entry) {
            names.push(entry);
        }
    }
    names.join(",")
}

/// Makes the CA, a serving certificate valid for `addresses`, and the service-account key pair
/// in `dir`.
pub fn make(dir: &Path, addresses: &[IpAddr]) -> Result<Pki, PkiError> {
    let p = |name: &str| dir.join(name);
    let s = |path: &Path| path.to_string_lossy().into_owned();
    let pki = Pki {
        ca_cert: p("ca.crt"),
        serving_cert: p("apiserver.crt"),
        serving_key: p("apiserver.key"),
        sa_key: p("sa.key"),
        sa_pub: p("sa.pub"),
    };
    let ca_key = p("ca.key");
    openssl(
        "CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=meshd-test-ca",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&pki.ca_cert),
        ],
    )?;
    let csr = p("apiserver.csr");
    openssl(
        "serving key",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            &s(&pki.serving_key),
            "-out",
            &s(&csr),
        ],
    )?;
    let ext = p("apiserver.ext");
    std::fs::write(
        &ext,
        format!("subjectAltName={}\n", subject_alt_names(addresses)),
    )
    .map_err(|source| PkiError::Write {
        path: ext.clone(),
        source,
    })?;
    openssl(
        "serving certificate",
        &[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&pki.ca_cert),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&pki.serving_cert),
        ],
    )?;
    openssl(
        "service-account key",
        &["genrsa", "-out", &s(&pki.sa_key), "2048"],
    )?;
    openssl(
        "service-account public key",
        &[
            "rsa",
            "-in",
            &s(&pki.sa_key),
            "-pubout",
            "-out",
            &s(&pki.sa_pub),
        ],
    )?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_names_cover_loopback_and_each_address_once() {
        let a: IpAddr = "198.18.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            subject_alt_names(&[a, IpAddr::from([127, 0, 0, 1]), a]),
            "DNS:localhost,IP:127.0.0.1,IP:198.18.0.1"
        );
    }
}
