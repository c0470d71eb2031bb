//! A process's stdio ports: the host sockets the agent connects the process's streams to, bound
//! before it starts, and wired to containerd's FIFOs once the agent has connected them.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use cocoon_protocol::StdioPorts;
use cocoon_sandbox::ProcessPorts;

use super::stdio::{self, Target};

/// How long the agent has to connect a process's streams.
const STDIO_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's streams for a process, bound before the agent connects them.
pub struct Ports(ProcessPorts);

impl Ports {
    pub fn bind(uds: &Path, first: u32, stdio: &[Target; 3], terminal: bool) -> Result<Self> {
        let wanted = [
            stdio[0].is_some(),
            stdio[1].is_some(),
            stdio[2].is_some() && !terminal,
        ];
        Ok(Self(
            ProcessPorts::bind(uds, first, wanted).context("binding a stdio socket")?,
        ))
    }

    pub fn ports(&self) -> StdioPorts {
        self.0.ports()
    }

    /// Connects containerd's FIFOs to the agent's streams once it has connected them.
    pub fn wire(
        self,
        stdio: &[Target; 3],
    ) -> Result<(Option<stdio::InputCloser>, Vec<JoinHandle<()>>)> {
        let streams = self
            .0
            .accept(STDIO_TIMEOUT)
            .context("the agent did not connect a stdio stream")?;
        let mut copiers = Vec::new();
        let mut stdin_handle = None;
        if let Some(stream) = streams.stdin.filter(|_| stdio[0].is_some()) {
            stdio::check_input(&stdio[0])?;
            let closer = stdio::InputCloser::default();
            stdin_handle = Some(closer.clone());
            // Not joined: it ends on CloseIO, at containerd's end of input, or when the process's
            // side of the stream is gone.
            drop(stdio::copy_in(stdio[0].clone(), stream, closer));
        }
        if let (Some(stream), Some(fifo)) = (streams.stdout, stdio::open_output(&stdio[1])?) {
            copiers.push(stdio::copy_out(stream, fifo));
        }
        if let (Some(stream), Some(fifo)) = (streams.stderr, stdio::open_output(&stdio[2])?) {
            copiers.push(stdio::copy_out(stream, fifo));
        }
        Ok((stdin_handle, copiers))
    }
}

pub fn targets(stdin: &str, stdout: &str, stderr: &str) -> Result<[Target; 3]> {
    Ok([
        Target::parse(stdin)?,
        Target::parse(stdout)?,
        Target::parse(stderr)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gets_a_port_for_each_stream_containerd_wants() {
        let stdio = targets("", "/run/containerd/fifo/1-stdout", "file:///var/log/1").unwrap();
        assert_eq!(
            stdio,
            [
                Target::None,
                Target::Fifo("/run/containerd/fifo/1-stdout".into()),
                Target::File("/var/log/1".into())
            ]
        );
        assert!(targets("", "binary:///usr/bin/logger", "").is_err());
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let ports = Ports::bind(&uds, 1000, &stdio, false).unwrap().ports();
        assert!(ports.stdin.is_none() && ports.stdout.is_some() && ports.stderr.is_some());
        // A tty's output is all on stdout.
        let ports = Ports::bind(&uds, 2000, &stdio, true).unwrap().ports();
        assert!(ports.stdout.is_some() && ports.stderr.is_none());
    }
}
