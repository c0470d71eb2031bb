//! Where `cocoon` keeps its containers, with no daemon: one directory per container under a
//! runtime root (`--root`, else `$COCOON_ROOT`, else `/run/cocoon` for root and
//! `$XDG_RUNTIME_DIR/cocoon` for anyone else). A container's directory holds its record, its disks,
//! the VM's vsock socket and console log, and the container's log. The record names the process
//! that watches the container (`cocoon run` itself, or its detached monitor), so a record whose
//! watcher is gone is known to be dead.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cocoon_sandbox::vm::check_socket_room;
use serde::{Deserialize, Serialize};

const RECORD: &str = "state.json";
const MAX_NAME: usize = 64;

/// What became of a container, as its watcher last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    Creating,
    Running,
    Exited { code: i32 },
    Failed { error: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// When it stopped (seconds since the epoch).
    #[serde(default)]
    pub finished: Option<u64>,
    pub status: Status,
    /// The process that watches the container and records how it ends.
    pub watcher_pid: u32,
    #[serde(default)]
    pub vmm_pid: Option<u32>,
    pub detached: bool,
    /// Published ports, as `cocoon ps` shows them.
    #[serde(default)]
    pub ports: String,
}

/// How a container looks from outside: its record, corrected where its watcher died unseen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    Exited(i32),
    Failed(String),
    /// Its watcher is gone without recording an end (killed, or the host rebooted).
    Dead,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `pid` is a live process (a zombie or another user's process counts).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 only checks whether the process exists.
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

impl Record {
    pub fn liveness(&self) -> Liveness {
        match &self.status {
            Status::Exited { code } => Liveness::Exited(*code),
            Status::Failed { error } => Liveness::Failed(error.clone()),
            Status::Creating | Status::Running if process_alive(self.watcher_pid) => {
                Liveness::Running
            }
            Status::Creating | Status::Running => Liveness::Dead,
        }
    }
}

/// The runtime root.
pub struct Root(PathBuf);

/// One container's directory.
pub struct Entry {
    pub name: String,
    pub dir: PathBuf,
}

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here at most 64 characters.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !first_ok || !rest_ok || name.len() > MAX_NAME {
        bail!("invalid name '{name}': use letters, digits, '_', '.' and '-' (starting with a letter or digit, at most {MAX_NAME})");
    }
    Ok(())
}

/// A fresh name for a container that was not given one.
pub fn generated_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("cocoon-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

impl Root {
    /// `--root`, else `$COCOON_ROOT`, else the default for this user; created (0700) if missing.
    pub fn locate(flag: Option<&Path>) -> Result<Self> {
        let path = match flag
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("COCOON_ROOT").map(PathBuf::from))
        {
            Some(path) => path,
            None if nix::unistd::geteuid().is_root() => PathBuf::from("/run/cocoon"),
            None => match std::env::var_os("XDG_RUNTIME_DIR") {
                Some(dir) => PathBuf::from(dir).join("cocoon"),
                None => bail!("XDG_RUNTIME_DIR is not set: set it (e.g. to /run/user/$(id -u)) or pass --root DIR"),
            },
        };
        // A container's directory is the VM's runtime directory: even a one-letter name's must
        // have room for the VM's sockets.
        if check_socket_room(&path.join("n")).is_err() {
            bail!(
                "runtime root {} is too long for the VM's sockets: pass a shorter --root",
                path.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the runtime root {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Claims `name`: its directory is created here and now, so two runs cannot both take it.
    pub fn claim(&self, name: &str) -> Result<Entry> {
        check_name(name)?;
        let dir = self.0.join(name);
        if check_socket_room(&dir).is_err() {
            bail!(
                "the name '{name}' is too long for the VM's sockets under {}: choose a shorter --name (or a shorter --root)",
                self.0.display()
            );
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(Entry {
                name: name.to_string(),
                dir,
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
                "the name '{name}' is already in use: remove it with `cocoon rm {name}`, or choose another --name"
            ),
            Err(e) => Err(anyhow!(e).context(format!("creating {}", dir.display()))),
        }
    }

    /// The container called `name`.
    pub fn open(&self, name: &str) -> Result<(Entry, Record)> {
        check_name(name)?;
        let entry = Entry {
            name: name.to_string(),
            dir: self.0.join(name),
        };
        match entry.record() {
            Ok(record) => Ok((entry, record)),
            Err(_) if !entry.dir.exists() => {
                bail!("no container named '{name}' (`cocoon ps -a` lists them)")
            }
            Err(e) => Err(e),
        }
    }

    /// Every container with a readable record, oldest first.
    pub fn list(&self) -> Result<Vec<(Entry, Record)>> {
        let mut all = Vec::new();
        for dirent in
            std::fs::read_dir(&self.0).with_context(|| format!("reading {}", self.0.display()))?
        {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            let entry = Entry {
                name,
                dir: dirent.path(),
            };
            if let Ok(record) = entry.record() {
                all.push((entry, record));
            }
        }
        all.sort_by_key(|(_, r)| r.created);
        Ok(all)
    }
}

impl Entry {
    pub fn record(&self) -> Result<Record> {
        let path = self.dir.join(RECORD);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Replaces the record atomically (readers never see half of one).
    pub fn save(&self, record: &Record) -> Result<()> {
        let partial = self.dir.join(format!("{RECORD}.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(record)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&partial, self.dir.join(RECORD))?;
        Ok(())
    }

    /// Changes the record with `change`.
    pub fn update(&self, change: impl FnOnce(&mut Record)) -> Result<()> {
        let mut record = self.record()?;
        change(&mut record);
        self.save(&record)
    }

    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// Everything of this container, gone.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(anyhow!(e).context(format!("removing {}", self.dir.display())))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, watcher_pid: u32, status: Status) -> Record {
        Record {
            name: name.into(),
            image: "default".into(),
            command: vec!["true".into()],
            created: now(),
            finished: None,
            status,
            watcher_pid,
            vmm_pid: None,
            detached: true,
            ports: String::new(),
        }
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "db_2.x", &"n".repeat(64)] {
            check_name(good).unwrap();
        }
        for bad in ["", "-a", ".", "../x", "a/b", "a b", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name(&generated_name()).unwrap();
    }

    #[test]
    fn claim_open_list_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::locate(Some(&tmp.path().join("root"))).unwrap();
        let entry = root.claim("box").unwrap();
        let err = root.claim("box").err().unwrap().to_string();
        assert!(err.contains("cocoon rm box"), "{err}");
        entry
            .save(&record("box", std::process::id(), Status::Running))
            .unwrap();
        let (_, back) = root.open("box").unwrap();
        assert_eq!(back.liveness(), Liveness::Running);
        entry
            .update(|r| r.status = Status::Exited { code: 3 })
            .unwrap();
        assert_eq!(root.open("box").unwrap().1.liveness(), Liveness::Exited(3));
        assert_eq!(root.list().unwrap().len(), 1);
        let missing = root.open("nope").err().unwrap().to_string();
        assert!(missing.contains("cocoon ps -a"), "{missing}");
        entry.remove().unwrap();
        assert!(root.list().unwrap().is_empty());
    }

    #[test]
    fn a_record_whose_watcher_died_is_dead() {
        // A child that has exited and been reaped: its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(record("x", pid, Status::Running).liveness(), Liveness::Dead);
    }

    #[test]
    fn a_root_too_long_for_sockets_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(90)));
        let err = Root::locate(Some(&long)).err().unwrap().to_string();
        assert!(err.contains("--root"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::locate(Some(&tmp.path().join("r".repeat(20)))).unwrap();
        let err = root.claim(&"n".repeat(64)).err().unwrap().to_string();
        assert!(err.contains("shorter --name"), "{err}");
    }
}
