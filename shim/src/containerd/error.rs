//! Why a task request failed, typed: [`TaskError`], and the one place it becomes the ttrpc error
//! containerd is answered with (its code and message).

use cocoon_protocol::{AgentError, ErrorKind, Reply};
use cocoon_sandbox::vm::VmError;
use cocoon_sandbox::ClientError;
use containerd_shim::protos::ttrpc::{self, Code};

/// A task request's failure. The shim's own refusals read as the agent's do (`NotFound: no task
/// x`), except the few that have always been said bare; everything else keeps its causes, said
/// after it (`creating /run/...: Permission denied`).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such task, exec or pod.
    #[error("NotFound: {0}")]
    NotFound(String),
    /// The task id is taken.
    #[error("AlreadyExists: {0}")]
    AlreadyExists(String),
    /// The request contradicts itself (a pod's container that names no pod).
    #[error("InvalidArgument: {0}")]
    InvalidArgument(String),
    /// Not in a state that allows it: a running task deleted, an exec started twice, a pod whose
    /// disk slots are all taken.
    #[error("FailedPrecondition: {0}")]
    FailedPrecondition(String),
    /// Exec's refusal of a task that is not there, said bare.
    #[error("no task {0}")]
    NoTaskToExecIn(String),
    /// Exec's refusal of an exec id that is taken, said bare.
    #[error("exec {0} exists")]
    ExecExists(String),
    /// A request whose payload containerd sent does not parse (an exec's process spec, an
    /// update's resources).
    #[error("{0}")]
    BadRequest(String),
    /// What cocoon microVMs cannot do (checkpoints).
    #[error("{0}")]
    Unimplemented(String),
    /// The agent answered with a reply that does not fit the request (a cocoon bug).
    #[error("the agent answered {reply:?} to {request}")]
    UnexpectedReply {
        request: &'static str,
        reply: Box<Reply>,
    },
    /// The agent refused (its error kind decides the code), or could not be reached.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// The shim's own failure, said in one line (the config, a VM that has stopped).
    #[error("{0}")]
    Internal(String),
    /// The VMM process or its API socket failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The host's part failed: files, mounts, disks; with the context it was given.
    #[error(transparent)]
    Host(#[from] anyhow::Error),
}

impl From<std::io::Error> for TaskError {
    fn from(error: std::io::Error) -> Self {
        Self::Host(error.into())
    }
}

impl TaskError {
    /// The gRPC code containerd (and the CRI above it) decides by: NotFound, AlreadyExists, ...
    /// as the shim or the agent says; UNKNOWN for failures.
    pub fn code(&self) -> Code {
        match self {
            Self::NotFound(_) | Self::NoTaskToExecIn(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) | Self::ExecExists(_) => Code::ALREADY_EXISTS,
            Self::InvalidArgument(_) | Self::BadRequest(_) => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::Agent(ClientError::Agent(AgentError { kind, .. })) => code_of(*kind),
            Self::Agent(_)
            | Self::UnexpectedReply { .. }
            | Self::Internal(_)
            | Self::Vm(_)
            | Self::Host(_) => Code::UNKNOWN,
        }
    }

    /// The error and each of its causes, `: `-separated (as `{:#}` of an `anyhow::Error` says
    /// them).
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            message.push_str(": ");
            message.push_str(&error.to_string());
            cause = error.source();
        }
        message
    }
}

/// The gRPC code of an agent's error kind.
fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Unimplemented => Code::UNIMPLEMENTED,
        ErrorKind::Internal => Code::UNKNOWN,
    }
}

impl From<TaskError> for ttrpc::Error {
    /// containerd's answer: the code and the message, which the shim's log gets too.
    fn from(error: TaskError) -> Self {
        let message = error.message();
        tracing::error!("{message}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn answer(error: TaskError) -> (Code, String) {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_keep_their_codes_and_words() {
        let cases = [
            (
                TaskError::NotFound("no task a".into()),
                Code::NOT_FOUND,
                "NotFound: no task a",
            ),
            (
                TaskError::AlreadyExists("task a exists".into()),
                Code::ALREADY_EXISTS,
                "AlreadyExists: task a exists",
            ),
            (
                TaskError::InvalidArgument("names no pod".into()),
                Code::INVALID_ARGUMENT,
                "InvalidArgument: names no pod",
            ),
            (
                TaskError::FailedPrecondition("a is still running: kill it first".into()),
                Code::FAILED_PRECONDITION,
                "FailedPrecondition: a is still running: kill it first",
            ),
            (
                TaskError::NoTaskToExecIn("a".into()),
                Code::NOT_FOUND,
                "no task a",
            ),
            (
                TaskError::ExecExists("e".into()),
                Code::ALREADY_EXISTS,
                "exec e exists",
            ),
            (
                TaskError::BadRequest("exec e: the process spec is not valid: x".into()),
                Code::INVALID_ARGUMENT,
                "exec e: the process spec is not valid: x",
            ),
            (
                TaskError::Unimplemented("checkpoint of a: no".into()),
                Code::UNIMPLEMENTED,
                "checkpoint of a: no",
            ),
            (
                TaskError::UnexpectedReply {
                    request: "pids",
                    reply: Box::new(Reply::Done),
                },
                Code::UNKNOWN,
                "the agent answered Done to pids",
            ),
            (
                TaskError::Internal("the pod's VM has stopped".into()),
                Code::UNKNOWN,
                "the pod's VM has stopped",
            ),
        ];
        for (error, code, message) in cases {
            assert_eq!(answer(error), (code, message.to_string()));
        }
    }

    #[test]
    fn the_agents_kinds_decide_the_code_and_other_failures_are_unknown() {
        for (kind, code) in [
            (ErrorKind::NotFound, Code::NOT_FOUND),
            (ErrorKind::AlreadyExists, Code::ALREADY_EXISTS),
            (ErrorKind::InvalidArgument, Code::INVALID_ARGUMENT),
            (ErrorKind::FailedPrecondition, Code::FAILED_PRECONDITION),
            (ErrorKind::Unimplemented, Code::UNIMPLEMENTED),
            (ErrorKind::Internal, Code::UNKNOWN),
        ] {
            let error = TaskError::from(ClientError::Agent(AgentError::new(kind, "said")));
            assert_eq!(answer(error), (code, format!("{kind:?}: said")));
        }
        assert_eq!(
            answer(ClientError::Closed.into()),
            (
                Code::UNKNOWN,
                "the agent's control channel closed (did the VM stop?)".into()
            )
        );
    }

    #[test]
    fn host_failures_say_their_causes_as_anyhow_did() {
        let failed = || -> anyhow::Result<()> {
            let io = Err(std::io::Error::from_raw_os_error(libc::EACCES));
            io.context("creating /x")?;
            Ok(())
        };
        let error = failed().context("the root").unwrap_err();
        let before = format!("{error:#}");
        assert_eq!(
            before,
            "the root: creating /x: Permission denied (os error 13)"
        );
        assert_eq!(answer(error.into()), (Code::UNKNOWN, before));
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let before = format!(
            "{:#}",
            anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT))
        );
        assert_eq!(answer(io.into()), (Code::UNKNOWN, before));
    }
}
