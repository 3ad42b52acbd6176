//! `instance` targets: where a container instance can be reached. The ELB asks an
//! [`InstanceDirectory`] instead of reading another service's records, so it keeps depending
//! only on the protocol and store crates; the binary wires ECS in.

use std::net::IpAddr;

/// What the directory knows about one instance ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// No instance has this ID.
    Unknown,
    /// The instance exists but is not running (deregistered), or has no address to reach it on.
    Stopped,
    /// Running, reachable on its private address.
    Running(IpAddr),
}

/// Resolves EC2-style instance IDs (`i-…`) to addresses. Lookups are cheap and synchronous.
pub trait InstanceDirectory: Send + Sync + 'static {
    fn lookup(&self, instance_id: &str) -> InstanceState;
}

/// A directory without instances, for an ELB running without ECS.
#[derive(Debug, Default)]
pub struct NoInstances;

impl InstanceDirectory for NoInstances {
    fn lookup(&self, _: &str) -> InstanceState {
        InstanceState::Unknown
    }
}

/// The shape of an EC2 instance ID: `i-` and 8 or 17 lowercase hex digits.
pub(crate) fn well_formed(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The address an `instance` target should carry now.
pub(crate) fn address(dir: &dyn InstanceDirectory, id: &str) -> Option<String> {
    match dir.lookup(id) {
        InstanceState::Running(ip) => Some(ip.to_string()),
        InstanceState::Unknown | InstanceState::Stopped => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_checked_for_shape() {
        assert!(well_formed("i-0123abcd"));
        assert!(well_formed("i-0123456789abcdef0"));
        for bad in [
            "i-",
            "i-0123abc",
            "i-0123ABCD",
            "10.0.0.1",
            "x-0123abcd",
            "i-0123456789abcdef",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
