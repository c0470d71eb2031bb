//! Architecture support. cocoon targets x86-64 only for now.

pub mod x86_64;
