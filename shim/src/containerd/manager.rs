//! The sandbox manager: the shim's containers and the sandboxes they run in, and the operations
//! containerd's task API asks of them (create, start, exec, signal, pause, delete, shut down...),
//! each carried out with the guest agent and published as containerd's task events.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cocoon_common::lock;
use cocoon_protocol::{ContainerStats, Operation, Reply, Rootfs};
use cocoon_sandbox::ClientError;
use containerd_shim::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use oci_spec::runtime::{LinuxResources, Spec};

use super::config::Config;
use super::disk_slots::boot_root;
use super::error::TaskError;
use super::events::Events;
use super::guest_spec::{guest_spec, make_root};
use super::ports::{targets, Ports};
use super::processes::{Container, Exited, Member, Phase, Process, ProcessState};
use super::sandbox::Sandbox;
use super::vm_lifecycle::{sandbox_dir, Lifecycle};

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The containers of one shim (one sandbox's, or a pod's), each in its sandbox's microVM.
pub struct SandboxManager {
    /// The cocoon config, or why it could not be read (said at every Create).
    config: Result<Config, String>,
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    events: Events,
    lifecycle: Lifecycle,
}

fn no_task(id: &str) -> TaskError {
    TaskError::NotFound(format!("no task {id}"))
}

fn no_exec(id: &str, exec_id: &str) -> TaskError {
    TaskError::NotFound(format!("no exec {exec_id} in {id}"))
}

impl SandboxManager {
    pub fn new(config: Result<Config, String>, namespace: String, events: Events) -> Self {
        Self {
            config,
            namespace,
            containers: Mutex::default(),
            lifecycle: Lifecycle::new(events.clone()),
            events,
        }
    }

    fn config(&self) -> Result<&Config, TaskError> {
        self.config
            .as_ref()
            .map_err(|e| TaskError::Internal(format!("the cocoon config: {e}")))
    }

    /// Creates the task `req` names: in a VM of its own (a pod's sandbox container, or a
    /// container alone), or in its pod's VM. Returns its pid.
    pub fn create(&self, req: &api::CreateTaskRequest) -> Result<u32, TaskError> {
        if lock(&self.containers).contains_key(&req.id) {
            return Err(TaskError::AlreadyExists(format!("task {} exists", req.id)));
        }
        let spec = Spec::load(Path::new(&req.bundle).join("config.json"))
            .context("reading the bundle's config.json")?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let kind = annotations.get(CONTAINER_TYPE).map(String::as_str);
        if kind == Some("container") {
            let pod = annotations.get(SANDBOX_ID).ok_or_else(|| {
                TaskError::InvalidArgument(format!(
                    "container {} is a pod's container but names no pod ({SANDBOX_ID})",
                    req.id
                ))
            })?;
            return self.join_pod(req, spec, pod);
        }
        // Before anything costly: where no microVM can boot, say so at once.
        cocoon_sandbox::check_kvm().map_err(anyhow::Error::from)?;
        let dir = sandbox_dir(&self.namespace, &req.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("container-id"), &req.id)?;
        let result = (|| {
            let (root, copied) = make_root(req, &spec, &dir, &self.config()?.layer_cache)?;
            let pod = kind == Some("sandbox");
            let sandbox = self
                .lifecycle
                .boot(self.config()?, &req.id, &spec, &root, &dir, pod)?;
            let spec = guest_spec(spec, false, &copied);
            self.create_on_agent(req, spec, &sandbox, boot_root(&root).1, None)
                .inspect_err(|_| self.lifecycle.destroy(&sandbox))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// A pod's container: its root disks fill free disk slots of the pod's VM (a layer disk the
    /// VM has already is shared).
    fn join_pod(
        &self,
        req: &api::CreateTaskRequest,
        spec: Spec,
        pod: &str,
    ) -> Result<u32, TaskError> {
        let sandbox = lock(&self.containers)
            .get(pod)
            .map(|c| c.sandbox.clone())
            .ok_or_else(|| {
                TaskError::NotFound(format!(
                    "pod {pod} has no VM in this shim (create its sandbox container first)"
                ))
            })?;
        let dir = sandbox
            .dir
            .join(cocoon_common::short_hash(req.id.as_bytes()));
        let mut taken = Vec::new();
        let result = (|| {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (root, copied) = make_root(req, &spec, &dir, &self.config()?.layer_cache)?;
            let rootfs = sandbox.attach_root(&req.id, &root, &mut taken)?;
            let member = Member {
                slots: taken.clone(),
                dir: dir.clone(),
            };
            let spec = guest_spec(spec, true, &copied);
            self.create_on_agent(req, spec, &sandbox, rootfs, Some(member))
        })();
        if result.is_err() {
            for slot in taken {
                sandbox.release(slot, &req.id);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Creates the container in the guest on `rootfs`, wires its stdio and records it.
    fn create_on_agent(
        &self,
        req: &api::CreateTaskRequest,
        spec: Spec,
        sandbox: &Arc<Sandbox>,
        rootfs: Rootfs,
        member: Option<Member>,
    ) -> Result<u32, TaskError> {
        let stdio = targets(&req.stdin, &req.stdout, &req.stderr)?;
        let ports = Ports::bind(&sandbox.uds, 1000, &stdio, req.terminal)?;
        let reply = sandbox.client.call(Operation::CreateContainer {
            container_id: req.id.clone(),
            spec: Box::new(spec),
            rootfs,
            stdio: ports.ports(),
        })?;
        let pid = match reply {
            Reply::Started { pid } => pid,
            other => {
                return Err(TaskError::UnexpectedReply {
                    request: "create",
                    reply: Box::new(other),
                })
            }
        };
        let (stdin, copiers) = match ports.wire(&stdio) {
            Ok(wired) => wired,
            Err(e) => {
                let _ = sandbox.client.call(Operation::Delete {
                    container_id: req.id.clone(),
                });
                return Err(e.into());
            }
        };
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let mut init = Process::created(pid, stdio, req.terminal);
        init.stdin = stdin;
        init.copiers = copiers;
        lock(&self.containers).insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                sandbox: sandbox.clone(),
                member,
                init,
                execs: HashMap::new(),
            },
        );
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            events::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(events::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Starts task `id`'s init process, or (with an `exec_id`) its exec; returns its pid.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        let mut containers = lock(&self.containers);
        let container = containers.get_mut(id).ok_or_else(|| no_task(id))?;
        let client = container.sandbox.client.clone();
        if exec_id.is_empty() {
            client.call(Operation::Start {
                container_id: id.to_string(),
            })?;
            let process = &mut container.init;
            process.phase = Phase::Running;
            let pid = process.pid;
            self.lifecycle.watch(
                id,
                None,
                container.sandbox.clone(),
                process.exit.clone(),
                std::mem::take(&mut process.copiers),
                pid,
            );
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                events::TaskStart {
                    container_id: id.to_string(),
                    pid,
                    ..Default::default()
                },
            );
            return Ok(pid);
        }
        // An exec's start waits for the agent and for its stdio streams to connect: not with
        // the shim's table locked, or one slow exec would hold up every request for every
        // container of the pod (a probe's ExecSync, a kill, a state).
        let sandbox = container.sandbox.clone();
        let process = container
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| no_exec(id, exec_id))?;
        let spec = process.pending.take().ok_or_else(|| {
            TaskError::FailedPrecondition(format!("exec {exec_id} already started"))
        })?;
        let (stdio, terminal, exit) = (
            process.stdio.clone(),
            process.terminal,
            process.exit.clone(),
        );
        drop(containers);
        let kill = || {
            let _ = client.call(Operation::Signal {
                container_id: id.to_string(),
                exec_id: Some(exec_id.to_string()),
                signal: nix::sys::signal::Signal::SIGKILL as i32,
                all: false,
            });
        };
        let started = (|| {
            let stdio = targets(&stdio[0], &stdio[1], &stdio[2])?;
            let ports = Ports::bind(&sandbox.uds, 2000, &stdio, terminal)?;
            let pid = match client.call(Operation::Exec {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                process: Box::new(spec),
                stdio: ports.ports(),
            })? {
                Reply::Started { pid } => pid,
                other => {
                    return Err(TaskError::UnexpectedReply {
                        request: "exec",
                        reply: Box::new(other),
                    })
                }
            };
            let wired = ports.wire(&stdio);
            if wired.is_err() {
                // Started, but its stdio is not connected: it must not run on unwatched.
                kill();
            }
            let (stdin, copiers) = wired?;
            Ok((pid, stdin, copiers))
        })();
        let (pid, stdin, copiers) = match started {
            Ok(started) => started,
            Err(e) => {
                // It will never run: whoever waits for it (ctr waits before it starts) is told
                // it ended, as containerd's runc shim does, so no call is left hanging.
                exit.set(Exited::now(255));
                return Err(e);
            }
        };
        let mut containers = lock(&self.containers);
        let Some(process) = containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        else {
            // Its container went while it started (an exec that is starting is not deleted on
            // its own): nobody is left to watch it.
            drop(containers);
            kill();
            exit.set(Exited::now(255));
            return Err(no_exec(id, exec_id));
        };
        process.pid = pid;
        process.stdin = stdin;
        process.phase = Phase::Running;
        self.lifecycle
            .watch(id, Some(exec_id.to_string()), sandbox, exit, copiers, pid);
        drop(containers);
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            events::TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Runs `f` on the process `id`/`exec_id` (the init process without an `exec_id`).
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        let mut containers = lock(&self.containers);
        let container = containers.get_mut(id).ok_or_else(|| no_task(id))?;
        let process = if exec_id.is_empty() {
            &mut container.init
        } else {
            container
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| no_exec(id, exec_id))?
        };
        process.refresh();
        f(process)
    }

    /// Where the process `id`/`exec_id` is.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState, TaskError> {
        let bundle = lock(&self.containers)
            .get(id)
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        self.with_process(id, exec_id, |p| {
            Ok(ProcessState {
                bundle,
                pid: p.pid,
                phase: p.phase.clone(),
                stdio: p.stdio.clone(),
                terminal: p.terminal,
            })
        })
    }

    /// Blocks until the process `id`/`exec_id` has exited.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<Exited, TaskError> {
        let exit = self.with_process(id, exec_id, |p| Ok(p.exit.clone()))?;
        Ok(exit.wait())
    }

    /// Sends `signal` to the process `id`/`exec_id` (`all`: every process of the container),
    /// unless it has stopped.
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let stopped =
            self.with_process(id, exec_id, |p| Ok(matches!(p.phase, Phase::Stopped(_))))?;
        if stopped {
            return Ok(());
        }
        let sandbox = lock(&self.containers)
            .get(id)
            .ok_or_else(|| no_task(id))?
            .sandbox
            .clone();
        let sent = sandbox.client.call(Operation::Signal {
            container_id: id.to_string(),
            exec_id: (!exec_id.is_empty()).then(|| exec_id.to_string()),
            signal: signal as i32,
            all,
        });
        match sent {
            // The guest is stuck (its agent answers nothing): the signal cannot reach the
            // process, and a kill must still end the task (the kubelet and `ctr task kill` send
            // SIGTERM first and retry on an error, for ever). Its VM is stopped, ending every
            // task in it with status 255, as when a VMM dies.
            Err(ClientError::NoAnswer { waited, .. }) => {
                tracing::error!(
                    "{id}: the agent did not answer signal {signal} within {waited:?}: the guest is stuck; stopping its VM (sandbox {}), which ends every task in it",
                    sandbox.id
                );
                sandbox.kill_vm();
                Ok(())
            }
            other => other.map(drop).map_err(TaskError::from),
        }
    }

    /// Deletes the stopped (or never started) process `id`/`exec_id`; a task's init process
    /// takes the container, and a VM of its own, with it. Returns its pid and exit.
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exited), TaskError> {
        let (pid, exited) = self.with_process(id, exec_id, |p| match &p.phase {
            Phase::Stopped(exited) => Ok((p.pid, *exited)),
            Phase::Created if !exec_id.is_empty() && p.pending.is_none() => {
                Err(TaskError::FailedPrecondition(format!(
                    "exec {exec_id} is starting: kill it once it has started"
                )))
            }
            Phase::Created if !exec_id.is_empty() => {
                // Never started: release its waiters before it goes.
                p.exit.set(Exited::now(255));
                Ok((0, Exited::now(0)))
            }
            Phase::Created => Ok((p.pid, Exited::now(0))),
            _ => Err(TaskError::FailedPrecondition(format!(
                "{id} is still running: kill it first"
            ))),
        })?;
        if !exec_id.is_empty() {
            if let Some(c) = lock(&self.containers).get_mut(id) {
                c.execs.remove(exec_id);
            }
            return Ok((pid, exited));
        }
        let container = lock(&self.containers).remove(id);
        if let Some(container) = container {
            let deleted = container.sandbox.client.call(Operation::Delete {
                container_id: id.to_string(),
            });
            match &container.member {
                // A pod's container leaves the VM to the pod, and its disk slots to the next
                // containers, unless the guest could not let go of its disks: a slot refilled
                // under a filesystem still mounted there would take its writes.
                Some(member) => match deleted {
                    Ok(_) => {
                        for slot in &member.slots {
                            container.sandbox.release(*slot, id);
                        }
                        let _ = std::fs::remove_dir_all(&member.dir);
                    }
                    Err(e) => tracing::warn!(
                        "{id}: the guest did not release the container's disks ({e}); its disk slots {:?} stay taken until the pod's VM stops",
                        member.slots
                    ),
                },
                None => self.lifecycle.destroy(&container.sandbox),
            }
            self.events.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                events::TaskDelete {
                    container_id: id.to_string(),
                    id: id.to_string(),
                    pid,
                    exit_status: exited.status,
                    exited_at: MessageField::some(exited.at()),
                    ..Default::default()
                },
            );
        }
        Ok((pid, exited))
    }

    /// Adds exec `exec_id` to task `id`, to run `process` once started.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: oci_spec::runtime::Process,
        stdio: [String; 3],
        terminal: bool,
    ) -> Result<(), TaskError> {
        {
            let mut containers = lock(&self.containers);
            let container = containers
                .get_mut(id)
                .ok_or_else(|| TaskError::NoTaskToExecIn(id.to_string()))?;
            if container.execs.contains_key(exec_id) {
                return Err(TaskError::ExecExists(exec_id.to_string()));
            }
            let mut exec = Process::created(0, stdio, terminal);
            exec.pending = Some(process);
            container.execs.insert(exec_id.to_string(), exec);
        }
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            events::TaskExecAdded {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// The pids of task `id`'s processes, as the guest numbers them.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, TaskError> {
        match self.call(
            id,
            Operation::ListPids {
                container_id: id.to_string(),
            },
        )? {
            Reply::Pids { pids } => Ok(pids),
            other => Err(TaskError::UnexpectedReply {
                request: "pids",
                reply: Box::new(other),
            }),
        }
    }

    /// Freezes task `id`.
    pub fn pause(&self, id: &str) -> Result<(), TaskError> {
        self.call(
            id,
            Operation::Pause {
                container_id: id.to_string(),
            },
        )?;
        let _ = self.with_process(id, "", |p| {
            p.phase = Phase::Paused;
            Ok(())
        });
        self.events.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            events::TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Thaws task `id`.
    pub fn resume(&self, id: &str) -> Result<(), TaskError> {
        self.call(
            id,
            Operation::Resume {
                container_id: id.to_string(),
            },
        )?;
        let _ = self.with_process(id, "", |p| {
            if p.phase == Phase::Paused {
                p.phase = Phase::Running;
            }
            Ok(())
        });
        self.events.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            events::TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Ends the input of process `id`/`exec_id` once what containerd wrote has been forwarded.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), TaskError> {
        self.with_process(id, exec_id, |p| {
            if let Some(stdin) = p.stdin.take() {
                stdin.close();
            }
            Ok(())
        })
    }

    /// Resizes the tty of process `id`/`exec_id`.
    pub fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), TaskError> {
        self.call(
            id,
            Operation::ResizeTty {
                container_id: id.to_string(),
                exec_id: (!exec_id.is_empty()).then(|| exec_id.to_string()),
                rows,
                cols,
            },
        )?;
        Ok(())
    }

    /// Sets task `id`'s cgroup limits to `resources`.
    pub fn update(&self, id: &str, resources: LinuxResources) -> Result<(), TaskError> {
        self.call(
            id,
            Operation::UpdateResources {
                container_id: id.to_string(),
                resources: Box::new(resources),
            },
        )?;
        Ok(())
    }

    /// Task `id`'s cgroup's counters.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, TaskError> {
        match self.call(
            id,
            Operation::Stats {
                container_id: id.to_string(),
            },
        )? {
            Reply::Stats { stats } => Ok(stats),
            other => Err(TaskError::UnexpectedReply {
                request: "stats",
                reply: Box::new(other),
            }),
        }
    }

    /// Task `id`'s init pid; 0 for a task the shim does not have.
    pub fn task_pid(&self, id: &str) -> u32 {
        lock(&self.containers)
            .get(id)
            .map(|c| c.init.pid)
            .unwrap_or(0)
    }

    /// Stops every VM, if no container is left or `now`; true when it did (the shim may exit).
    pub fn shut_down(&self, now: bool) -> bool {
        let empty = lock(&self.containers).is_empty();
        if !empty && !now {
            return false;
        }
        tracing::info!("shutting down (now: {now})");
        let sandboxes: Vec<Arc<Sandbox>> = lock(&self.containers)
            .drain()
            .filter(|(_, c)| c.member.is_none()) // a pod's VM goes with its sandbox
            .map(|(_, c)| c.sandbox)
            .collect();
        for sandbox in sandboxes {
            self.lifecycle.destroy(&sandbox);
        }
        true
    }

    /// Waits, at most `timeout`, for every task event so far to reach containerd.
    pub fn events_published(&self, timeout: Duration) -> bool {
        self.events.published_so_far(timeout)
    }

    /// Asks task `id`'s agent to carry out `op`.
    fn call(&self, id: &str, op: Operation) -> Result<Reply, TaskError> {
        let client = {
            let containers = lock(&self.containers);
            containers
                .get(id)
                .ok_or_else(|| no_task(id))?
                .sandbox
                .client
                .clone()
        };
        Ok(client.call(op)?)
    }
}
