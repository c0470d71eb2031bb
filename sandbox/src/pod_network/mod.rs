//! A pod's network for its microVM, as Kata's tcfilter model does it: containerd's CRI has made
//! the pod's network namespace and CNI has put a veth in it with the pod's address; in that
//! namespace cocoon makes a tap (with the veth's MTU), joins veth and tap with ingress qdiscs and
//! u32 match-all + mirred redirect filters both ways, and hands the tap's descriptor to the VMM and
//! the veth's MAC, addresses, routes and MTU to the guest. The guest is then the pod's endpoint:
//! frames it sends leave through the veth as if the pod had sent them, and the VMM, not the pod
//! namespace's netfilter (which redirected frames bypass), filters what it may send.
//!
//! Teardown: the tap is not persistent and goes with the VMM's descriptor (its qdisc with it);
//! [`PodTap::remove`] removes the veth's ingress qdisc, and CNI DEL the veth.

mod netns;
mod plumbing;
mod tc;

use std::fs::File;
use std::path::{Path, PathBuf};

use cocoon_protocol::guest_network::{Interface, Route};

pub use netns::in_netns;

/// The tap's name in the pod's namespace.
pub const TAP_NAME: &str = "tap0_cocoon";
/// The guest's name for the pod's interface.
pub const GUEST_INTERFACE: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error("the pod's network namespace {}: {source} (give an existing namespace, as CRI's sandbox spec names it)", path.display())]
    Netns { path: PathBuf, source: nix::Error },
    #[error("{what} in the pod's network namespace: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tap(#[from] cocoon_net::tap::TapError),
    #[error("the pod's network thread panicked")]
    Panicked,
}

/// The pod's veth, what the guest takes over from it.
#[derive(Clone, Debug)]
pub struct PodInterface {
    pub veth: String,
    pub veth_index: u32,
    pub interface: Interface,
    pub routes: Vec<Route>,
}

/// A pod namespace's tap, joined to its veth: give `tap` to the VMM (as `fd=N`).
pub struct PodTap {
    pub tap: File,
    pub pod: PodInterface,
    netns: PathBuf,
}

impl PodTap {
    /// Finds the pod's interface in `netns` (the first with an IPv4 address; None for a pod
    /// with loopback only, like a host-network pod's own namespace would be), makes the tap and
    /// the redirects.
    pub fn plumb(netns: &Path) -> Result<Option<Self>, PodNetworkError> {
        let path = netns.to_path_buf();
        in_netns(netns, move || {
            let Some(pod) = plumbing::find_pod_interface()? else {
                return Ok(None);
            };
            let tap = plumbing::join_tap(&pod)?;
            Ok(Some(Self {
                tap,
                pod,
                netns: path,
            }))
        })
    }

    /// The pod's network namespace, where the tap is (and the VMM runs).
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Removes the veth's ingress qdisc (its filter goes with it); the tap goes when the VMM's
    /// descriptor closes.
    pub fn remove(self) -> Result<(), PodNetworkError> {
        let index = self.pod.veth_index;
        drop(self.tap);
        in_netns(&self.netns, move || tc::remove_ingress(index))
    }
}

#[cfg(test)]
mod host_tests;
