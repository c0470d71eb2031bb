//! `-v HOSTDIR:GUESTDIR[:ro|:rw]`: a host directory in the container. The guest gets an ext4
//! image of the directory on its own virtio-blk disk (read-only disks for `:ro`). A writable
//! volume is a copy: when the container has ended, while its VM still runs, the agent walks the
//! mounted volume and streams it back (`cocoon_protocol::volume_export`), and the host directory
//! is made to hold what it held — files added, changed and removed.
//!
//! The host never parses the image the guest wrote (a guest whose kernel is compromised can
//! forge any byte of it): the stream is taken by `cocoon_sandbox::volume_import`, which checks
//! every entry as hostile input and makes it beneath a private staging directory; only a stream
//! the agent's count confirms complete is applied to the host directory, so one that fails
//! leaves it as it was. Links come back as links, never followed; hard links, device nodes,
//! fifos and setuid/setgid bits never; owners are the invoking user's (the copy-back runs as
//! that user, with no privilege beyond theirs); bytes and entries are bounded by what the
//! volume's disk holds. Safer than a guest-side tar and a host-side `tar -x`, which follows what
//! the archive says.

use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cocoon_protocol::volume_export::ExportLimits;
use cocoon_protocol::{Operation, Reply};
use cocoon_sandbox::volume_import::{self, open_dir, DirIdentity};
use cocoon_sandbox::{AgentClient, HostPort};
use serde::{Deserialize, Serialize};

/// Room a writable volume has beyond what the directory holds (the image is sparse).
const WRITABLE_FREE_MIB: u64 = 256;
/// Where the agent mounts volume N before the container binds it to its place.
const GUEST_MOUNT_BASE: &str = "/run/cocoon/volumes";
/// The host vsock ports a volume's stream may arrive on (the first free one from here).
const EXPORT_PORT_BASE: u32 = 5000;
/// How long a copy-back may take: this, plus a second per MiB the volume may bring back.
const EXPORT_BASE_TIME: Duration = Duration::from_secs(60);
/// How long the stream may stay silent.
const EXPORT_IDLE_TIME: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
    /// What its copy-back may bring, set when its disk is made.
    #[serde(default)]
    pub limits: Option<ExportLimits>,
    /// The host directory `-v` named (device, inode): the copy-back writes into no other.
    #[serde(default)]
    pub identity: Option<DirIdentity>,
}

/// Parses one `-v`.
pub fn parse(text: &str) -> Result<Volume> {
    let usage =
        || format!("-v '{text}': use HOSTDIR:GUESTDIR, HOSTDIR:GUESTDIR:ro or HOSTDIR:GUESTDIR:rw");
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (*h, *g, false),
        [h, g, "ro"] => (*h, *g, true),
        [h, g, "rw"] => (*h, *g, false),
        _ => bail!("{}", usage()),
    };
    if host.is_empty() || guest.is_empty() {
        bail!("{}", usage());
    }
    if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
        bail!("-v '{text}': the container path '{guest}' must be absolute, without '..'");
    }
    if guest == "/" {
        bail!("-v '{text}': a volume cannot replace the container's root");
    }
    let host_path = Path::new(host);
    if !host_path.is_dir() {
        bail!("-v '{text}': the host directory {host} does not exist (or is not a directory)");
    }
    let host = host_path
        .canonicalize()
        .with_context(|| format!("resolving {host}"))?;
    let identity = volume_import::dir_identity(&host)
        .with_context(|| format!("-v '{text}': opening {}", host.display()))?;
    Ok(Volume {
        host,
        guest: guest.trim_end_matches('/').to_string(),
        read_only,
        limits: None,
        identity: Some(identity),
    })
}

/// Where a writable volume's stream comes from: the sandbox's agent, and the VMM's vsock socket
/// on which host ports are bound.
pub struct Guest<'a> {
    pub client: &'a Arc<AgentClient>,
    pub uds: &'a Path,
}

impl Volume {
    /// Where the agent mounts the `index`th volume.
    pub fn guest_mount(index: usize) -> String {
        format!("{GUEST_MOUNT_BASE}/{index}")
    }

    /// Writes the volume's disk image at `image`, and notes what its copy-back may bring.
    pub fn make_image(&mut self, image: &Path) -> Result<()> {
        let free = if self.read_only { 0 } else { WRITABLE_FREE_MIB };
        let size = cocoon_guest_image::rootfs::ext4_image_sized(&self.host, image, free)
            .with_context(|| format!("making an image of {}", self.host.display()))?;
        // mkfs.ext4 adds lost+found; the container should see the directory as it is.
        if !self.host.join("lost+found").exists() {
            cocoon_guest_image::rootfs::debugfs(
                image,
                &["-w".as_ref(), "-R".as_ref(), "rmdir lost+found".as_ref()],
            )
            .context("debugfs 'rmdir lost+found'")?;
        }
        self.limits = Some(ExportLimits {
            max_bytes: size.bytes,
            max_entries: size.inodes,
        });
        Ok(())
    }

    /// Makes the host directory hold what the `index`th volume holds in the guest now (the
    /// container has ended, the VM runs). Returns one line per kind of entry refused.
    pub fn copy_back(
        &self,
        guest: &Guest<'_>,
        index: usize,
        scratch: &Path,
    ) -> Result<Vec<String>> {
        let limits = self
            .limits
            .ok_or_else(|| anyhow!("the volume's disk was never made"))?;
        let staging = scratch.join(format!("volume-{index}-incoming"));
        let scratch_dir = open_dir(scratch)?;
        volume_import::remove(scratch_dir.as_fd(), staging.file_name().unwrap_or_default())?;
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        let result = self.bring_back(guest, index, &staging, limits);
        let removed =
            volume_import::remove(scratch_dir.as_fd(), staging.file_name().unwrap_or_default());
        let (received, synced) = result
            .with_context(|| format!("copying the volume back into {}", self.host.display()))?;
        removed.with_context(|| format!("removing {}", staging.display()))?;
        let mut lines = received.refusals.lines(limits.max_bytes);
        lines.extend(synced.line());
        Ok(lines)
    }

    fn bring_back(
        &self,
        guest: &Guest<'_>,
        index: usize,
        staging: &Path,
        limits: ExportLimits,
    ) -> Result<(volume_import::Received, volume_import::Synced)> {
        let untouched = "; the host directory was left as it was";
        let identity = self
            .identity
            .ok_or_else(|| anyhow!("the volume's host directory was never checked"))?;
        let deadline =
            Instant::now() + EXPORT_BASE_TIME + Duration::from_secs(limits.max_bytes >> 20);
        let port = HostPort::bind_free(guest.uds, EXPORT_PORT_BASE)
            .context("binding the volume's port")?;
        let token = cocoon_sandbox::host_port::new_token().context("making the export's token")?;
        let (answer_tx, answer) = mpsc::channel();
        let client = guest.client.clone();
        let request = Operation::ExportVolume {
            target: Self::guest_mount(index),
            port: port.port,
            token: token.clone(),
            limits,
        };
        // Not joined: a hostile agent may never answer, and the VM stops after a failure.
        std::thread::spawn(move || {
            let _ = answer_tx.send(client.call(request));
        });
        let stream = port
            .accept_with_token(&token, deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| anyhow!("waiting for the volume's stream: {e}{untouched}"))?;
        let staging_dir = open_dir(staging)?;
        let mut input = BufReader::with_capacity(256 << 10, Deadline { stream, deadline });
        let received = volume_import::receive(&mut input, staging_dir.as_fd(), limits)
            .map_err(|e| anyhow!("the guest's stream of the volume: {e:#}{untouched}"))?;
        // The rest of the end-of-archive blocks: read, so the agent's last write is not refused.
        let _ = io::copy(&mut input.take(64 << 10), &mut io::sink());
        let left = deadline.saturating_duration_since(Instant::now());
        match answer.recv_timeout(left) {
            Ok(Ok(Reply::Exported { entries })) if entries == received.entries => {}
            Ok(Ok(Reply::Exported { entries })) => bail!(
                "the agent sent {entries} entries, the stream held {}: it was cut short{untouched}",
                received.entries
            ),
            Ok(Ok(other)) => bail!("the agent answered {other:?} to the export{untouched}"),
            Ok(Err(e)) => bail!("the agent could not export the volume: {e}{untouched}"),
            Err(_) => bail!("the agent did not finish the export in time{untouched}"),
        }
        let host_dir = volume_import::open_same_dir(&self.host, identity)
            .map_err(|e| anyhow!("{e}{untouched}"))?;
        let synced = volume_import::sync(staging_dir.as_fd(), host_dir.as_fd(), &received)
            .context("writing the volume's contents")?;
        Ok((received, synced))
    }
}

/// The stream, read within the copy-back's deadline and never silent for longer than
/// [`EXPORT_IDLE_TIME`].
struct Deadline {
    stream: UnixStream,
    deadline: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the copy-back ran out of time",
            ));
        }
        self.stream
            .set_read_timeout(Some(left.min(EXPORT_IDLE_TIME)))?;
        self.stream.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        let v = parse(&format!("{host}:/data:ro")).unwrap();
        assert_eq!((v.guest.as_str(), v.read_only), ("/data", true), "{v:?}");
        assert!(!parse(&format!("{host}:/data/")).unwrap().read_only);
        for bad in [
            "nocolon".to_string(),
            format!("{host}:relative"),
            format!("{host}:/data:rx"),
            format!("{host}:/"),
            format!("{host}:/a/../b"),
            "/does/not/exist:/data".to_string(),
            format!("{host}:/data:ro:extra"),
        ] {
            let err = parse(&bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with("-v '")),
                "{bad}: {err:?}"
            );
        }
    }
}
