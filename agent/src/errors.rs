//! The agent's error answers: the constructors every operation builds its [`AgentError`]s with.

use cocoon_protocol::{AgentError, ErrorKind};

/// What an operation answers the host.
pub type AgentResult<T> = Result<T, AgentError>;

pub fn error(kind: ErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

/// An [`ErrorKind::Internal`] error: `what` failed, for reason `e`.
pub fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    error(ErrorKind::Internal, format!("{what}: {e}"))
}

/// An error and its causes, outermost first (libcontainer's messages say little on their own).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
