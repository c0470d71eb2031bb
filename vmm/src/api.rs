//! The VMM's API socket: changes to a running VM, one JSON request per line, one JSON answer per
//! line. Today it fills and empties disk slots:
//!
//! ```text
//! {"op":"attach_disk","slot":0,"path":"/run/pod/c1.ext4"}   -> {"ok":true,"capacity_bytes":67108864}
//! {"op":"attach_disk","slot":1,"path":"/layers/a.ext4","read_only":true}
//! {"op":"detach_disk","slot":0}                             -> {"ok":true}
//! ```
//!
//! Errors answer `{"ok":false,"error":"..."}` and leave the VM as it was. The socket is the host's
//! (the shim's); the guest cannot reach it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use cocoon_protocol::vmm_api::{ApiRequest as Request, ApiResponse as Response};

use crate::devices::virtio::block::BlockSlot;

/// How long a connection may stay silent before it is closed.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest request line read; anything longer is refused.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The VM's parts the API acts on.
pub struct Api {
    slots: Vec<BlockSlot>,
}

impl Api {
    pub fn new(slots: Vec<BlockSlot>) -> Self {
        Self { slots }
    }

    fn slot(&self, slot: usize) -> Result<&BlockSlot, Response> {
        self.slots.get(slot).ok_or_else(|| {
            Response::error(format!(
                "no disk slot {slot}: this VM has {} (boot it with more --disk-slots)",
                self.slots.len()
            ))
        })
    }

    /// Carries out one request line.
    pub fn handle_line(&self, line: &str) -> Response {
        let request: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                return Response::error(format!(
                    "bad request: {e} (send one JSON object per line, e.g. {{\"op\":\"detach_disk\",\"slot\":0}})"
                ))
            }
        };
        let result = match &request {
            Request::AttachDisk {
                slot,
                path,
                read_only,
            } => self.slot(*slot).and_then(|s| {
                s.attach(path, *read_only)
                    .map_err(|e| Response::error(format!("disk slot {slot}: {e}")))
            }),
            Request::DetachDisk { slot } => self.slot(*slot).map(|s| {
                s.detach();
                0
            }),
        };
        match result {
            Ok(capacity) => {
                tracing::info!("api: {request:?} done");
                Response {
                    ok: true,
                    error: None,
                    capacity_bytes: matches!(request, Request::AttachDisk { .. })
                        .then_some(capacity),
                }
            }
            Err(response) => response,
        }
    }

    /// Answers every request line of one connection until it closes.
    fn serve_connection(&self, stream: UnixStream) -> std::io::Result<()> {
        // One connection at a time: a client that stalls must not hold the others off for long.
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            let read = Read::take(&mut reader, MAX_REQUEST_BYTES).read_line(&mut line)?;
            if read == 0 {
                return Ok(());
            }
            let response = if line.ends_with('\n') {
                self.handle_line(line.trim_end())
            } else if read as u64 == MAX_REQUEST_BYTES {
                Response::error(format!("request longer than {MAX_REQUEST_BYTES} bytes"))
            } else {
                self.handle_line(&line) // the last line, without its newline
            };
            let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
            text.push('\n');
            writer.write_all(text.as_bytes())?;
            if read as u64 == MAX_REQUEST_BYTES && !line.ends_with('\n') {
                return Ok(()); // the rest of that line cannot be trusted as requests
            }
        }
    }
}

/// The API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("binding the API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the API thread: {0}")]
    Thread(std::io::Error),
}

/// The listening socket; removed when dropped (the VM stopped).
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path` and serves `api` on it from a thread of its own, one connection at a time.
    pub fn start(path: &Path, api: Api) -> Result<Self, ApiError> {
        let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            if let Err(e) = api.serve_connection(stream) {
                                tracing::warn!("api: connection ended: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("api: accept: {e}"),
                    }
                }
            })
            .map_err(ApiError::Thread)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::Block;

    #[test]
    fn requests_fill_and_empty_slots_and_bad_ones_say_why() {
        let image = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(image.path(), vec![0u8; 4096]).unwrap();
        let block = Block::empty_slot("slot0");
        let api = Api::new(vec![block.slot()]);
        let attach = format!(
            r#"{{"op":"attach_disk","slot":0,"path":"{}"}}"#,
            image.path().display()
        );
        let ok = api.handle_line(&attach);
        assert_eq!((ok.ok, ok.capacity_bytes), (true, Some(4096)));
        let busy = api.handle_line(&attach);
        assert!(busy.error.unwrap().contains("detach it first"));
        assert!(api.handle_line(r#"{"op":"detach_disk","slot":0}"#).ok);
        assert!(
            api.handle_line(&attach).ok,
            "an emptied slot takes an image again"
        );

        let missing = api.handle_line(r#"{"op":"detach_disk","slot":3}"#);
        assert!(missing
            .error
            .unwrap()
            .contains("no disk slot 3: this VM has 1"));
        let garbage = api.handle_line("attach please");
        assert!(garbage.error.unwrap().starts_with("bad request"));
        let no_file = api.handle_line(r#"{"op":"detach_disk","slot":0}"#);
        assert!(no_file.ok);
        let bad_path = api.handle_line(r#"{"op":"attach_disk","slot":0,"path":"/nonexistent"}"#);
        assert!(bad_path.error.unwrap().contains("/nonexistent"));
    }

    #[test]
    fn the_socket_answers_line_by_line_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let server = ApiServer::start(&path, Api::new(Vec::new())).unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        let mut writer = stream.try_clone().unwrap();
        writer
            .write_all(b"{\"op\":\"detach_disk\",\"slot\":0}\nnot json\n")
            .unwrap();
        let mut lines = BufReader::new(stream).lines();
        let first: Response = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(first.error.unwrap().contains("no disk slot 0"));
        let second: Response = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(!second.ok);
        drop(server);
        assert!(!path.exists());
    }
}
