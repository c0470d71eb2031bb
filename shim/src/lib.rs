//! cocoon's host front ends: [`launcher`] is `cocoon run` (one command, one microVM, one
//! container); [`containerd`] is containerd's runtime v2 shim, `containerd-shim-cocoon-v2`.

pub mod containerd;
pub mod launcher;
