//! A client for the URLs CRI's `Exec` and `Attach` return, as `kubectl exec -it` and
//! `kubectl attach -it` reach them through the kubelet: containerd's stream server, over a
//! websocket speaking `v4.channel.k8s.io`. Each binary message is one channel byte (0 stdin, 1
//! stdout, 2 stderr, 3 the error channel, 4 resize) and its data; the error channel carries a
//! JSON `metav1.Status` at the end (Success, or NonZeroExitCode with the code as a cause). v4 has
//! no way to end stdin short of closing the connection.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// The subprotocol kubectl prefers and containerd 1.6's stream server speaks.
pub const SUBPROTOCOL: &str = "v4.channel.k8s.io";

/// How a stream ended, as its error channel said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `{"status":"Success"}`: the exec exited 0 (attach: the session ended).
    Success,
    /// `NonZeroExitCode`, with the code.
    ExitCode(i32),
    /// Any other failure, its message.
    Failure(String),
    /// The connection closed without a status.
    NoStatus,
}

/// What came back on a stream.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

pub struct StreamSession {
    socket: WebSocket<TcpStream>,
    output: Output,
    ending: Option<Ending>,
    closed: bool,
}

/// Reads a `metav1.Status` from the error channel.
pub fn ending_of(status: &[u8]) -> Ending {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(status) else {
        return Ending::Failure(String::from_utf8_lossy(status).into_owned());
    };
    if json["status"] == "Success" {
        return Ending::Success;
    }
    if json["reason"] == "NonZeroExitCode" {
        let code = json["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok());
        if let Some(code) = code {
            return Ending::ExitCode(code);
        }
    }
    Ending::Failure(json["message"].as_str().unwrap_or_default().to_string())
}

impl StreamSession {
    /// Opens the stream at `url` (the `http://` URL CRI returned).
    pub fn open(url: &str) -> Result<Self> {
        let ws_url = url
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .ok_or_else(|| anyhow!("the stream URL {url} is not http://"))?;
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .with_context(|| format!("the stream URL {url}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| anyhow!("no host in {url}"))?;
        let tcp = TcpStream::connect(&authority)
            .with_context(|| format!("connecting to the stream server at {authority}"))?;
        tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (socket, response) = tungstenite::client(request, tcp)
            .map_err(|e| anyhow!("websocket handshake with {url}: {e}"))?;
        let protocol = response.headers().get("Sec-WebSocket-Protocol");
        if protocol.and_then(|p| p.to_str().ok()) != Some(SUBPROTOCOL) {
            bail!("the stream server chose the subprotocol {protocol:?}, not {SUBPROTOCOL}");
        }
        Ok(Self {
            socket,
            output: Output::default(),
            ending: None,
            closed: false,
        })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.socket
            .send(Message::binary(frame))
            .context("writing to the stream")
    }

    /// Types `data` into the process's stdin (or tty).
    pub fn input(&mut self, data: &str) -> Result<()> {
        self.send(STDIN, data.as_bytes())
    }

    /// Resizes the tty, as a terminal window does.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        let size = format!(r#"{{"Width":{cols},"Height":{rows}}}"#);
        self.send(RESIZE, size.as_bytes())
    }

    /// Takes in what arrives for up to 200 ms; false once the stream has closed.
    fn pump(&mut self) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        match self.socket.read() {
            Ok(Message::Binary(frame)) => {
                if let Some((&channel, data)) = frame.split_first() {
                    let text = String::from_utf8_lossy(data);
                    match channel {
                        STDOUT => self.output.stdout.push_str(&text),
                        STDERR => self.output.stderr.push_str(&text),
                        ERROR if !data.is_empty() => self.ending = Some(ending_of(data)),
                        _ => {}
                    }
                }
                Ok(true)
            }
            Ok(Message::Close(_)) => {
                self.closed = true;
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(true)
            }
            // The server closes the TCP connection right after its Close frame.
            Err(_) => {
                self.closed = true;
                Ok(false)
            }
        }
    }

    /// Waits until stdout holds `needle`, for at most `timeout`; the output so far either way.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<&Output> {
        let deadline = Instant::now() + timeout;
        while !self.output.stdout.contains(needle) {
            if !self.pump()? || Instant::now() > deadline {
                bail!(
                    "'{needle}' did not come back within {timeout:?} (stdout so far: {:?}, stderr: {:?})",
                    self.output.stdout,
                    self.output.stderr
                );
            }
        }
        Ok(&self.output)
    }

    /// Reads until the server ends the stream (the process exited and its output is flushed),
    /// for at most `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Result<(Output, Ending)> {
        let deadline = Instant::now() + timeout;
        while self.pump()? {
            if Instant::now() > deadline {
                bail!(
                    "the stream did not end within {timeout:?} (stdout so far: {:?})",
                    self.output.stdout
                );
            }
        }
        Ok((self.output, self.ending.unwrap_or(Ending::NoStatus)))
    }

    /// Leaves the stream (an attach's detach): closes the connection.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.pump(), Ok(true)) && Instant::now() < deadline {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_channel_says_how_a_stream_ended() {
        assert_eq!(
            ending_of(br#"{"metadata":{},"status":"Success"}"#),
            Ending::Success
        );
        let seven = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh], exit code 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        assert_eq!(ending_of(seven), Ending::ExitCode(7));
        assert_eq!(
            ending_of(br#"{"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","code":500}"#),
            Ending::Failure("Internal error occurred: boom".into())
        );
        assert_eq!(ending_of(b"plain"), Ending::Failure("plain".into()));
    }
}
