//! What one `cocoon run` asks for, checked, with the image's defaults filled in. A detached run
//! hands it to its monitor as `request.json` in the container's directory.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cocoon_sandbox::spec::ProcessOptions;
use serde::{Deserialize, Serialize};

use crate::image::ImageConfig;
use crate::network::Network;
use crate::volume::{self, Volume};

const MIN_MEMORY_MIB: u64 = 64;

/// How a process runs: the flags `cocoon run` and `cocoon exec` share.
#[derive(clap::Args, Debug, Default)]
pub struct ProcessFlags {
    /// Keep stdin open and pass it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal (with window-size changes).
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (and group) to run as, numeric.
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
}

impl ProcessFlags {
    /// The process these flags describe, checked, running `command`.
    pub fn process(&self, command: &[String]) -> Result<ProcessRequest> {
        check_env(&self.env)?;
        Ok(ProcessRequest {
            args: command.to_vec(),
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            user: self.user.as_deref().map(parse_user).transpose()?,
            terminal: self.tty,
        })
    }

    /// Whether the process gets a stdin stream.
    pub fn wants_stdin(&self) -> bool {
        self.interactive || self.tty
    }
}
const MAX_VOLUMES: usize = 16;
const FILE: &str = "request.json";

/// The container's process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessRequest {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<(u32, u32)>,
    pub terminal: bool,
}

impl ProcessRequest {
    pub fn options(&self) -> ProcessOptions {
        let (uid, gid) = self.user.unwrap_or((0, 0));
        ProcessOptions {
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            uid,
            gid,
            terminal: self.terminal,
        }
    }

    /// Fills in what the command line left to the image; the command line wins.
    pub fn apply_image(&mut self, image: &ImageConfig) -> Result<()> {
        let command = if self.args.is_empty() {
            image.cmd.clone()
        } else {
            std::mem::take(&mut self.args)
        };
        self.args = image.entrypoint.iter().cloned().chain(command).collect();
        if self.args.is_empty() {
            bail!(
                "no command to run: give one after the image (cocoon run IMAGE -- CMD [ARGS...])"
            );
        }
        let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
        let overridden: Vec<String> = self.env.iter().map(|e| key(e)).collect();
        let mut env: Vec<String> = image
            .env
            .iter()
            .filter(|e| !overridden.contains(&key(e)))
            .cloned()
            .collect();
        env.append(&mut self.env);
        self.env = env;
        if self.cwd.is_none() {
            self.cwd = image.workdir.clone();
        }
        if self.user.is_none() {
            self.user = image.user;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub image: String,
    pub process: ProcessRequest,
    pub interactive: bool,
    pub hostname: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub volumes: Vec<Volume>,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub remove_on_exit: bool,
    #[serde(default)]
    pub network: Network,
}

/// `256M`, `1g`, `65536k`, or bytes; in MiB.
pub fn parse_memory(text: &str) -> Result<u32> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| anyhow!("--memory '{text}' is not a size: use e.g. 256M or 1G"))?;
    let mib = value
        .checked_shl(shift)
        .map(|b| b >> 20)
        .unwrap_or(u64::MAX);
    if mib < MIN_MEMORY_MIB {
        bail!("--memory {text} is too small: a microVM needs at least {MIN_MEMORY_MIB}M");
    }
    u32::try_from(mib).map_err(|_| anyhow!("--memory {text} is too large"))
}

/// `UID` or `UID:GID`, numeric.
pub fn parse_user(text: &str) -> Result<(u32, u32)> {
    let bad = || anyhow!("-u '{text}': give a numeric UID or UID:GID");
    match text.split_once(':') {
        Some((u, g)) => Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?)),
        None => {
            let uid = text.parse().map_err(|_| bad())?;
            Ok((uid, uid))
        }
    }
}

pub fn check_env(env: &[String]) -> Result<()> {
    for e in env {
        if !e.contains('=') || e.starts_with('=') {
            bail!("-e '{e}': use KEY=VALUE");
        }
    }
    Ok(())
}

pub fn parse_volumes(specs: &[String]) -> Result<Vec<Volume>> {
    if specs.len() > MAX_VOLUMES {
        bail!("at most {MAX_VOLUMES} -v volumes per container");
    }
    specs.iter().map(|s| volume::parse(s)).collect()
}

impl Request {
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join(FILE), serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", dir.join(FILE).display()))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M").unwrap(), 256);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("131072k").unwrap(), 128);
        assert_eq!(parse_memory("134217728").unwrap(), 128);
        for bad in ["0", "12M", "lots", "", "1T", "99999999G"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_and_env() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, 50));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
        check_env(&["A=b".into(), "EMPTY=".into()]).unwrap();
        assert!(check_env(&["A".into()]).is_err());
        assert!(check_env(&["=b".into()]).is_err());
    }

    #[test]
    fn the_command_line_wins_over_the_image() {
        let image = ImageConfig {
            env: vec!["A=image".into(), "B=image".into()],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-arg".into()],
            workdir: Some("/srv".into()),
            user: Some((7, 7)),
        };
        let mut p = ProcessRequest {
            args: vec!["mine".into()],
            env: vec!["A=cli".into()],
            ..Default::default()
        };
        p.apply_image(&image).unwrap();
        assert_eq!(p.args, vec!["/entry", "mine"]);
        assert_eq!(p.env, vec!["B=image", "A=cli"]);
        assert_eq!(p.cwd.as_deref(), Some("/srv"));
        assert_eq!(p.user, Some((7, 7)));

        let mut bare = ProcessRequest::default();
        bare.apply_image(&image).unwrap();
        assert_eq!(bare.args, vec!["/entry", "default-arg"]);
        let err = ProcessRequest::default()
            .apply_image(&ImageConfig::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("no command"), "{err}");
    }
}
