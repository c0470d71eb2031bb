//! The control channel: listens on vsock port [`AGENT_PORT`], reads framed requests, answers each
//! on the connection it came from. Each request runs on its own thread, so a `Wait` does not hold
//! up the rest. A malformed message gets an error answer; a frame that breaks the stream (bad
//! magic, other version, over the size limit) gets one and the connection is closed. The agent
//! keeps serving either way.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_common::{lock, ExitCell};
use cocoon_protocol::{
    read_message, write_message, AgentError, ErrorKind, FrameError, Message, Operation, Reply,
    Request, Response, AGENT_PORT, PROTOCOL_VERSION,
};

use crate::containers::Sandbox;
use crate::events::EventBus;
use crate::logging::TARGET;
use crate::vsock;

pub struct Server {
    sandbox: Arc<Sandbox>,
    events: Arc<EventBus>,
    /// Set once the host asked for the sandbox to go: the VM powers off after answering.
    destroy: Arc<ExitCell<()>>,
    /// Control connections open now (the host closing them tells its answers arrived).
    open_connections: AtomicUsize,
}

/// How long the agent waits, after `DestroySandbox`, for the host to close its connections (and
/// so to have read the answer) before powering off.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

fn reply(out: &Arc<Mutex<File>>, id: u64, result: Result<Reply, AgentError>) {
    let message = Message::Response(Response { id, result });
    if let Err(e) = write_message(&mut *lock(out), &message) {
        tracing::error!(target: TARGET, "answering request {id}: {e}");
    }
}

impl Server {
    pub fn new(sandbox: Arc<Sandbox>, events: Arc<EventBus>) -> Self {
        Self {
            sandbox,
            events,
            destroy: Arc::new(ExitCell::default()),
            open_connections: AtomicUsize::new(0),
        }
    }

    /// Serves until the host destroys the sandbox.
    pub fn run(self) -> Result<(), String> {
        let listener = vsock::listen_on(AGENT_PORT)
            .map_err(|e| format!("listening on vsock port {AGENT_PORT}: {e}"))?;
        let this = Arc::new(self);
        {
            let this = this.clone();
            std::thread::spawn(move || loop {
                match vsock::accept_on(&listener) {
                    Ok(connection) => {
                        let this = this.clone();
                        std::thread::spawn(move || this.serve_connection(connection));
                    }
                    Err(e) => {
                        tracing::warn!(target: TARGET, "accept: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            });
        }
        this.destroy.wait();
        // The answer to DestroySandbox may still be on its way out of the guest: powering off now
        // could lose it. The host closes the channel once it has read it.
        let deadline = Instant::now() + GOODBYE_TIMEOUT;
        while this.open_connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn serve_connection(self: Arc<Self>, connection: File) {
        let Ok(mut input) = connection.try_clone() else {
            return;
        };
        let output = Arc::new(Mutex::new(connection));
        self.events.subscribe(&output);
        self.open_connections.fetch_add(1, Ordering::SeqCst);
        self.read_requests(&mut input, &output);
        self.open_connections.fetch_sub(1, Ordering::SeqCst);
    }

    fn read_requests(self: &Arc<Self>, input: &mut File, output: &Arc<Mutex<File>>) {
        loop {
            let request = match read_message(input) {
                Ok(Message::Request(request)) => request,
                Ok(_) => {
                    reply(
                        output,
                        0,
                        Err(AgentError::new(
                            ErrorKind::InvalidArgument,
                            "the agent only takes requests",
                        )),
                    );
                    continue;
                }
                Err(FrameError::Closed) => return,
                Err(FrameError::Malformed(e)) => {
                    reply(
                        output,
                        0,
                        Err(AgentError::new(
                            ErrorKind::InvalidArgument,
                            format!("malformed request: {e}"),
                        )),
                    );
                    continue;
                }
                Err(
                    e @ (FrameError::BadMagic(_)
                    | FrameError::UnsupportedVersion(_)
                    | FrameError::TooLarge(_)),
                ) => {
                    reply(
                        output,
                        0,
                        Err(AgentError::new(
                            ErrorKind::InvalidArgument,
                            format!("{e}; closing this connection"),
                        )),
                    );
                    return;
                }
                Err(FrameError::Io(_)) => return,
            };
            let this = self.clone();
            let output = output.clone();
            std::thread::spawn(move || this.handle(request, &output));
        }
    }

    fn handle(&self, request: Request, output: &Arc<Mutex<File>>) {
        let s = &self.sandbox;
        let result = match request.op {
            Operation::Version => Ok(Reply::Version {
                protocol: PROTOCOL_VERSION,
                agent: env!("CARGO_PKG_VERSION").to_string(),
            }),
            Operation::CreateSandbox {
                hostname,
                dns,
                hosts,
                mounts,
            } => s.create_sandbox(&hostname, &dns, &hosts, &mounts),
            Operation::CreateContainer {
                container_id,
                spec,
                rootfs,
                stdio,
            } => s.create_container(&container_id, *spec, &rootfs, &stdio),
            Operation::Start { container_id } => s.start(&container_id),
            Operation::Exec {
                container_id,
                exec_id,
                process,
                stdio,
            } => s.exec(&container_id, &exec_id, &process, &stdio),
            Operation::Signal {
                container_id,
                exec_id,
                signal,
                all,
            } => s.signal(&container_id, exec_id.as_deref(), signal, all),
            Operation::Wait {
                container_id,
                exec_id,
            } => s.wait(&container_id, exec_id.as_deref()),
            Operation::CloseStdin {
                container_id,
                exec_id,
            } => s.close_stdin(&container_id, exec_id.as_deref()),
            Operation::ResizeTty {
                container_id,
                exec_id,
                rows,
                cols,
            } => s.resize_tty(&container_id, exec_id.as_deref(), rows, cols),
            Operation::ListPids { container_id } => s.list_pids(&container_id),
            Operation::Stats { container_id } => s.stats(&container_id),
            Operation::UpdateResources {
                container_id,
                resources,
            } => s.update(&container_id, &resources),
            Operation::Pause { container_id } => s.set_paused(&container_id, true),
            Operation::Resume { container_id } => s.set_paused(&container_id, false),
            Operation::Delete { container_id } => s.delete(&container_id),
            Operation::ExportVolume {
                target,
                port,
                token,
                limits,
            } => s
                .writable_mount(&target)
                .and_then(|root| crate::export::export(&root, port, &token, limits)),
            Operation::UpdateInterface { interface } => {
                crate::network::update_interface(&interface).map(|()| Reply::Done)
            }
            Operation::UpdateRoutes { routes } => {
                crate::network::update_routes(&routes).map(|()| Reply::Done)
            }
            Operation::AddNeighbours { neighbours } => {
                crate::network::add_neighbours(&neighbours).map(|()| Reply::Done)
            }
            Operation::DestroySandbox => {
                let result = s.destroy();
                reply(output, request.id, result);
                self.destroy.set(());
                return;
            }
        };
        reply(output, request.id, result);
    }
}
