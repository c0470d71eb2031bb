//! cocoon's host front ends. [`launcher`] is `cocoon run`: one command, one microVM, one container.

pub mod launcher;
