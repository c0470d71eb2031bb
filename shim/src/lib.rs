//! `containerd-shim-cocoon-v2`, containerd's runtime v2 shim: each sandbox (a container, or a
//! CRI pod) is one microVM. See [`containerd`]. The launcher `cocoon` is its own crate (`cli/`).

pub mod containerd;
