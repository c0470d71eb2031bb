//! Message types. Field names are the wire names (JSON).

use serde::{Deserialize, Serialize};

/// Everything that crosses the control channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Message {
    Request(Request),
    Response(Response),
    Event(Event),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host, unique among its requests in flight; echoed by the response.
    pub id: u64,
    pub op: Operation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<Reply, AgentError>,
}

/// The vsock ports on which the agent connects a process's stdio back to the host (each stream its
/// own connection, which starts with `token`: see [`crate::port_token`]); `None` means the stream
/// is not wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioPorts {
    pub stdin: Option<u32>,
    pub stdout: Option<u32>,
    pub stderr: Option<u32>,
    #[serde(default)]
    pub token: String,
}

/// A filesystem the sandbox shares with its containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxMount {
    /// Block device in the guest (e.g. "/dev/vdb") or a filesystem name ("tmpfs").
    pub source: String,
    pub target: String,
    pub fstype: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Where a container's root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rootfs {
    /// A block device holding the filesystem, mounted as the container's root.
    BlockDevice {
        device: String,
        fstype: String,
        read_only: bool,
    },
    /// An image's layers in a read-only ext4 disk (`lower`, which several containers may share),
    /// the container's writes in an ext4 disk of its own (`upper`, holding `upper/` and `work/`),
    /// joined by overlayfs in the guest.
    Overlay { lower: String, upper: String },
}

/// What the host asks of the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Which protocol the agent speaks.
    Version,
    CreateSandbox {
        hostname: String,
        /// The guest's /etc/resolv.conf (none written when it has no servers), bound into every
        /// container whose spec does not mount one itself.
        #[serde(default)]
        dns: crate::guest_network::DnsConfig,
        /// The guest's /etc/hosts after its loopback lines ([`crate::guest_network::hosts_file`]),
        /// bound into every container whose spec does not mount one itself (CRI's do).
        #[serde(default)]
        hosts: Vec<crate::guest_network::HostEntry>,
        #[serde(default)]
        mounts: Vec<SandboxMount>,
    },
    CreateContainer {
        container_id: String,
        spec: Box<oci_spec::runtime::Spec>,
        rootfs: Rootfs,
        stdio: StdioPorts,
    },
    Start {
        container_id: String,
    },
    Exec {
        container_id: String,
        exec_id: String,
        process: Box<oci_spec::runtime::Process>,
        stdio: StdioPorts,
    },
    Signal {
        container_id: String,
        exec_id: Option<String>,
        signal: i32,
        /// Every process of the container.
        #[serde(default)]
        all: bool,
    },
    /// Answers when the process has exited.
    Wait {
        container_id: String,
        exec_id: Option<String>,
    },
    CloseStdin {
        container_id: String,
        exec_id: Option<String>,
    },
    ResizeTty {
        container_id: String,
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    ListPids {
        container_id: String,
    },
    Stats {
        container_id: String,
    },
    UpdateResources {
        container_id: String,
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    Pause {
        container_id: String,
    },
    Resume {
        container_id: String,
    },
    Delete {
        container_id: String,
    },
    /// Streams a writable sandbox mount back to the host (see [`crate::volume_export`]): the agent
    /// connects to host vsock `port`, writes `token` and a newline, then the tree under `target`
    /// (one of the sandbox's writable mounts) as a tar stream within `limits`, and answers
    /// `Exported` once all of it is out.
    ExportVolume {
        target: String,
        port: u32,
        token: String,
        limits: crate::volume_export::ExportLimits,
    },
    /// Sets up the guest interface with `interface.mac`: its name, MTU, addresses (replacing
    /// those it had), up.
    UpdateInterface {
        interface: crate::guest_network::Interface,
    },
    /// Adds (or replaces) routes in the guest's main table; link routes go first.
    UpdateRoutes {
        routes: Vec<crate::guest_network::Route>,
    },
    /// Adds permanent neighbour (ARP) entries.
    AddNeighbours {
        neighbours: Vec<crate::guest_network::Neighbour>,
    },
    DestroySandbox,
}

impl Operation {
    /// The operation's name, as its frames spell it (`create_container`), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::CreateSandbox { .. } => "create_sandbox",
            Self::CreateContainer { .. } => "create_container",
            Self::Start { .. } => "start",
            Self::Exec { .. } => "exec",
            Self::Signal { .. } => "signal",
            Self::Wait { .. } => "wait",
            Self::CloseStdin { .. } => "close_stdin",
            Self::ResizeTty { .. } => "resize_tty",
            Self::ListPids { .. } => "list_pids",
            Self::Stats { .. } => "stats",
            Self::UpdateResources { .. } => "update_resources",
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
            Self::Delete { .. } => "delete",
            Self::ExportVolume { .. } => "export_volume",
            Self::UpdateInterface { .. } => "update_interface",
            Self::UpdateRoutes { .. } => "update_routes",
            Self::AddNeighbours { .. } => "add_neighbours",
            Self::DestroySandbox => "destroy_sandbox",
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            // The agent's number: no overflow, whatever it says.
            Self::Signaled(signal) => signal.saturating_add(128),
        }
    }
}

/// cgroup v2 figures of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub cpu_usage_usec: u64,
    pub memory_current_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Version {
        protocol: u16,
        agent: String,
    },
    Done,
    Started {
        pid: u32,
    },
    Exited {
        status: ExitStatus,
    },
    Pids {
        pids: Vec<u32>,
    },
    Stats {
        stats: ContainerStats,
    },
    /// A volume's stream is complete: `entries` tar entries (extension headers not counted).
    Exported {
        entries: u64,
    },
}

/// Something the agent tells the host unasked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The container's cgroup hit its memory limit and the kernel killed a process.
    Oom { container_id: String },
    /// A process exited (also answered to any Wait).
    Exit {
        container_id: String,
        exec_id: Option<String>,
        status: ExitStatus,
    },
}

/// What went wrong, in categories a host can map to its own (ttrpc/gRPC codes, exit statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    /// The object is not in a state that allows this (second start, exec into a stopped container).
    FailedPrecondition,
    Unimplemented,
    Internal,
}

/// An error answer: a kind, and a message for a person that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ExitStatus, Operation};

    #[test]
    fn an_operations_name_is_its_tag_on_the_wire() {
        let ops = [
            Operation::Version,
            Operation::DestroySandbox,
            Operation::Start {
                container_id: "c".into(),
            },
            Operation::Wait {
                container_id: "c".into(),
                exec_id: None,
            },
            Operation::CloseStdin {
                container_id: "c".into(),
                exec_id: None,
            },
            Operation::ListPids {
                container_id: "c".into(),
            },
        ];
        for op in ops {
            let wire = serde_json::to_value(&op).unwrap();
            assert_eq!(wire["op"], op.name(), "{op:?}");
        }
    }

    #[test]
    fn exit_codes_read_as_a_shell_reports_them() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert_eq!(ExitStatus::Signaled(i32::MAX).code(), i32::MAX);
    }
}
