//! Who holds an address (a pod interface: container ID and interface name), how an owner is
//! written into and read back from its address file, and the name of its index link.

use std::net::IpAddr;

use super::{IpamError, INDEX_PREFIX};

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The container ID (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface name in the container (`CNI_IFNAME`).
    pub ifname: String,
}

impl Owner {
    /// The name of this owner's index link.
    pub fn index_name(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.to_file().as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{INDEX_PREFIX}{hex}")
    }

    /// The owner file's content.
    pub fn to_file(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    /// Parse an owner file's content; `None` for anything but exactly two valid lines.
    pub fn from_file(text: &str) -> Option<Owner> {
        let rest = text.strip_suffix('\n')?;
        let (container_id, ifname) = rest.split_once('\n')?;
        let owner = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        owner.validate().ok()?;
        Some(owner)
    }

    pub(super) fn validate(&self) -> Result<(), IpamError> {
        check_key("container ID", &self.container_id)?;
        check_key("interface name", &self.ifname)
    }
}

fn check_key(what: &'static str, value: &str) -> Result<(), IpamError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.contains('/')
        && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidKey {
            what,
            value: value.to_string(),
        })
    }
}

/// One entry of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The allocated address.
    pub address: IpAddr,
    /// Its owner, or `None` when the file does not parse (it still blocks the address).
    pub owner: Option<Owner>,
}
