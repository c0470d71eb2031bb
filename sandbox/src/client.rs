//! The agent's control channel from the host: a hybrid-vsock connection to the agent's port,
//! requests with ids answered in any order (a `Wait` may be answered long after later requests),
//! and the events the agent pushes.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_common::lock;
use cocoon_protocol::{
    read_message, write_message, AgentError, Event, FrameError, Message, Operation, Reply, Request,
    AGENT_PORT,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent did not answer on {path} within {waited:?}: {last_error}")]
    Unreachable {
        path: String,
        waited: Duration,
        last_error: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the agent's control channel closed (did the VM stop?)")]
    Closed,
    #[error("the agent did not answer {op} within {waited:?} (the guest may be stuck; its console says more)")]
    NoAnswer { op: &'static str, waited: Duration },
    #[error("the agent answered {0:?}, which does not fit the request")]
    UnexpectedReply(Box<Reply>),
    #[error("control channel: {0}")]
    Frame(#[from] FrameError),
}

/// Opens a hybrid-vsock stream to the guest's `port`: connect to the VMM's socket, send
/// `CONNECT <port>\n`, expect `OK <host port>\n`.
pub fn connect_vsock(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => {
                stream.set_read_timeout(None)?;
                return if line.starts_with(b"OK ") {
                    Ok(stream)
                } else {
                    Err(io::Error::other(format!(
                        "unexpected handshake answer '{}'",
                        String::from_utf8_lossy(&line)
                    )))
                };
            }
            _ => line.push(byte[0]),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("nothing listens on guest vsock port {port} yet"),
    ))
}

/// Longest agent error message passed on (characters).
const MAX_MESSAGE_CHARS: usize = 2048;

/// An agent's error as the host may show it on a terminal or in a log: the guest wrote it, so
/// control characters are escaped (no escape sequences, no forged lines) and it is cut short.
fn printable(mut error: AgentError) -> AgentError {
    let mut text = String::new();
    for (i, c) in error.message.chars().enumerate() {
        if i == MAX_MESSAGE_CHARS {
            text.push_str("...");
            break;
        }
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    error.message = text;
    error
}

/// The calls waiting for their answers, and whether the channel is gone (then no call may
/// start waiting: nobody would ever answer it).
#[derive(Default)]
struct Routes {
    waiting: HashMap<u64, mpsc::Sender<Result<Reply, AgentError>>>,
    closed: bool,
}

type Pending = Arc<Mutex<Routes>>;

/// How long the agent may take to answer `op`. A Wait answers when its process exits and an
/// ExportVolume once a whole volume has streamed out: neither has a bound. Everything else is
/// answered from the guest's state or after a bounded step (a spawn's helper has 60 s), so a
/// request still unanswered past this is a stuck guest, and the caller is told so instead of
/// waiting for ever (and holding up whatever it holds).
fn answer_deadline(op: &Operation, bound: Duration) -> Option<Duration> {
    match op {
        Operation::Wait { .. } | Operation::ExportVolume { .. } => None,
        // A signal is sent, not waited on: a guest that cannot answer one soon is stuck, and
        // its host has to know in time to stop it (a kill must end its task).
        Operation::Signal { .. } => Some(bound.min(SIGNAL_ANSWER_TIMEOUT)),
        _ => Some(bound),
    }
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent may take to answer a signal.
const SIGNAL_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Events kept for the host's reader at most; more are dropped (counted and logged): a guest
/// that pushes events nobody reads (the launcher reads none) must not grow the host's memory.
const EVENT_QUEUE: usize = 1024;
/// The longest container or exec id an event may name (containerd's are 64 characters): with
/// [`EVENT_QUEUE`], what queued events can hold is bounded.
const MAX_EVENT_ID: usize = 256;

/// Whether an event names ids a host could have given.
fn plausible(event: &Event) -> bool {
    let short = |id: &str| id.len() <= MAX_EVENT_ID;
    match event {
        Event::Oom { container_id } => short(container_id),
        Event::Exit {
            container_id,
            exec_id,
            ..
        } => short(container_id) && exec_id.as_deref().is_none_or(short),
    }
}

pub struct AgentClient {
    writer: Mutex<UnixStream>,
    pending: Pending,
    next_id: AtomicU64,
    events: Mutex<mpsc::Receiver<Event>>,
    /// [`ANSWER_TIMEOUT`], shorter in tests.
    answer_timeout: Duration,
}

impl AgentClient {
    /// Connects to the agent of the VM whose vsock socket is `uds`, retrying until it listens
    /// (it starts a moment after the guest boots) or `timeout` passes.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_while(uds, timeout, || true)
    }

    /// [`Self::connect`], giving up as soon as `alive` says the VM is gone (a guest that crashed
    /// while booting need not be waited for).
    pub fn connect_while(
        uds: &Path,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Self, ClientError> {
        let started = Instant::now();
        let stream = loop {
            match connect_vsock(uds, AGENT_PORT) {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() >= timeout || !alive() => {
                    return Err(ClientError::Unreachable {
                        path: uds.display().to_string(),
                        waited: started.elapsed(),
                        last_error: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let client = Self::over(stream).map_err(|e| ClientError::Frame(e.into()))?;
        match client.call(Operation::Version)? {
            Reply::Version { .. } => Ok(client),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// A client over an established stream to the agent.
    pub fn over(stream: UnixStream) -> io::Result<Self> {
        let mut reader = stream.try_clone()?;
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::sync_channel(EVENT_QUEUE);
        let routes = pending.clone();
        std::thread::spawn(move || {
            let mut dropped = 0u64;
            let why = loop {
                match read_message(&mut reader) {
                    Ok(Message::Response(response)) => {
                        if let Some(tx) = lock(&routes).waiting.remove(&response.id) {
                            let _ = tx.send(response.result.map_err(printable));
                        }
                    }
                    Ok(Message::Event(event)) => {
                        let queued = plausible(&event)
                            && !matches!(
                                events_tx.try_send(event),
                                Err(mpsc::TrySendError::Full(_))
                            );
                        if !queued {
                            dropped += 1;
                            // Logarithmically: a guest that floods gets a few lines, no more.
                            if dropped.is_power_of_two() {
                                tracing::warn!("dropped {dropped} events from the agent so far (queue of {EVENT_QUEUE} full, or an id over {MAX_EVENT_ID} bytes)");
                            }
                        }
                    }
                    Ok(Message::Request(_)) => {}
                    Err(e) => break e,
                }
            };
            // The channel is gone (or unreadable: then nothing more on it can be trusted):
            // every caller still waiting learns it, and none starts waiting from now on.
            if !matches!(why, FrameError::Closed) {
                tracing::warn!("the agent's control channel failed: {why}");
            }
            let _ = reader.shutdown(std::net::Shutdown::Both);
            let mut routes = lock(&routes);
            routes.closed = true;
            routes.waiting.clear();
        });
        Ok(Self {
            writer: Mutex::new(stream),
            pending,
            next_id: AtomicU64::new(1),
            events: Mutex::new(events_rx),
            answer_timeout: ANSWER_TIMEOUT,
        })
    }

    /// Sends one request and waits for its answer, at most [`answer_deadline`].
    pub fn call(&self, op: Operation) -> Result<Reply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            let mut routes = lock(&self.pending);
            if routes.closed {
                return Err(ClientError::Closed);
            }
            routes.waiting.insert(id, tx);
        }
        let (name, deadline) = (op.name(), answer_deadline(&op, self.answer_timeout));
        let sent = write_message(
            &mut *lock(&self.writer),
            &Message::Request(Request { id, op }),
        );
        if let Err(e) = sent {
            lock(&self.pending).waiting.remove(&id);
            return Err(e.into());
        }
        let answer = match deadline {
            None => rx.recv().map_err(|_| ClientError::Closed),
            Some(waited) => rx.recv_timeout(waited).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => {
                    lock(&self.pending).waiting.remove(&id);
                    ClientError::NoAnswer { op: name, waited }
                }
                mpsc::RecvTimeoutError::Disconnected => ClientError::Closed,
            }),
        };
        Ok(answer??)
    }

    /// Closes the channel (the agent takes that as "every answer arrived").
    pub fn close(&self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }

    /// The next event the agent pushed, waiting at most `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        lock(&self.events).recv_timeout(timeout).ok()
    }

    /// The next event the agent pushes, however long that takes; None once the channel closed
    /// (the agent or VM went away, or [`close`](Self::close)).
    pub fn wait_event(&self) -> Option<Event> {
        lock(&self.events).recv().ok()
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        // Also ends the reader thread, which holds its own handle on the socket.
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::ErrorKind;

    #[test]
    fn agent_errors_reach_the_user_without_control_characters() {
        let e = printable(AgentError::new(
            ErrorKind::Internal,
            "bad 'x'\x1b[2J\ncocoon: forged line\u{9b}",
        ));
        assert_eq!(e.message, "bad 'x'\\u{1b}[2J\\ncocoon: forged line\\u{9b}");
        let long = printable(AgentError::new(ErrorKind::Internal, "y".repeat(10_000)));
        assert_eq!(long.message.chars().count(), MAX_MESSAGE_CHARS + 3);
    }

    #[test]
    fn a_request_the_agent_never_answers_fails_after_its_bound() {
        let (host, _agent) = UnixStream::pair().unwrap();
        let mut client = AgentClient::over(host).unwrap();
        client.answer_timeout = Duration::from_millis(50);
        let error = client.call(Operation::ListPids {
            container_id: "c".into(),
        });
        assert!(
            matches!(
                error,
                Err(ClientError::NoAnswer {
                    op: "list_pids",
                    ..
                })
            ),
            "{error:?}"
        );
        assert!(lock(&client.pending).waiting.is_empty());
    }

    #[test]
    fn a_signal_is_answered_sooner_than_other_requests_or_the_guest_is_stuck() {
        let signal = Operation::Signal {
            container_id: "c".into(),
            exec_id: None,
            signal: 9,
            all: false,
        };
        assert_eq!(
            answer_deadline(&signal, ANSWER_TIMEOUT),
            Some(SIGNAL_ANSWER_TIMEOUT)
        );
        let short = Duration::from_millis(50);
        assert_eq!(answer_deadline(&signal, short), Some(short));
        let wait = Operation::Wait {
            container_id: "c".into(),
            exec_id: None,
        };
        assert_eq!(answer_deadline(&wait, ANSWER_TIMEOUT), None);
    }

    #[test]
    fn events_nobody_reads_are_bounded() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let client = AgentClient::over(host).unwrap();
        let event = |container_id: String| Message::Event(Event::Oom { container_id });
        // A guest that pushes far more events than anyone reads, and some with absurd ids.
        for i in 0..3 * EVENT_QUEUE {
            write_message(&mut agent, &event(format!("c{i}"))).unwrap();
        }
        write_message(&mut agent, &event("x".repeat(MAX_EVENT_ID + 1))).unwrap();
        drop(agent);
        let started = Instant::now();
        while !lock(&client.pending).closed && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut kept = Vec::new();
        while let Some(Event::Oom { container_id }) = client.next_event(Duration::ZERO) {
            kept.push(container_id);
        }
        // The first ones, in order, as many as the queue holds; the rest were dropped.
        assert_eq!(kept.len(), EVENT_QUEUE);
        assert_eq!(
            kept.last().map(String::as_str),
            Some(&*format!("c{}", EVENT_QUEUE - 1))
        );
    }

    #[test]
    fn after_an_unreadable_frame_no_call_waits_for_ever() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let client = AgentClient::over(host).unwrap();
        agent.write_all(b"not a frame at all").unwrap();
        // The reader gives up on the channel; every call from then on is told at once.
        let started = Instant::now();
        while !lock(&client.pending).closed && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let error = client.call(Operation::Wait {
            container_id: "c".into(),
            exec_id: None,
        });
        assert!(matches!(error, Err(ClientError::Closed)), "{error:?}");
    }
}
