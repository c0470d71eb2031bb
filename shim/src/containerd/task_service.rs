//! containerd's task API v2 (ttrpc `Task`), translated: each request becomes a call on the
//! [`SandboxManager`], its answer the response, its [`TaskError`] the ttrpc error.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use super::config::Config;
use super::error::TaskError;
use super::events::Events;
use super::manager::SandboxManager;
use super::processes::{status_of, Phase};

/// How long Shutdown waits for the queued task events to reach containerd before the shim exits.
const EVENTS_BEFORE_EXIT_WAIT: Duration = Duration::from_secs(5);

pub struct TaskService {
    manager: SandboxManager,
    /// Signalled once Shutdown has stopped every VM: the shim exits.
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(
        config: Result<Config, String>,
        namespace: String,
        events: Events,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            manager: SandboxManager::new(config, namespace, events),
            exit,
        }
    }
}

/// An exec's or an update's JSON payload.
fn parse<T: serde::de::DeserializeOwned>(
    json: &[u8],
    what: impl FnOnce(serde_json::Error) -> String,
) -> Result<T, TaskError> {
    serde_json::from_slice(json).map_err(|e| TaskError::BadRequest(what(e)))
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = self.manager.create(&req)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.manager.start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.manager.state(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = match &state.phase {
            Phase::Stopped(exited) => (exited.status, MessageField::some(exited.at())),
            _ => (0, MessageField::none()),
        };
        let [stdin, stdout, stderr] = state.stdio;
        Ok(api::StateResponse {
            id: req.id,
            bundle: state.bundle,
            pid: state.pid,
            status: status_of(&state.phase).into(),
            stdin,
            stdout,
            stderr,
            terminal: state.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let exited = self.manager.wait(&req.id, &req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status: exited.status,
            exited_at: MessageField::some(exited.at()),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.manager
            .kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (pid, exited) = self.manager.delete(&req.id, &req.exec_id)?;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exited.status,
            exited_at: MessageField::some(exited.at()),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let process = parse(&req.spec.value, |e| {
            format!("exec {}: the process spec is not valid: {e}", req.exec_id)
        })?;
        self.manager.exec(
            &req.id,
            &req.exec_id,
            process,
            [req.stdin, req.stdout, req.stderr],
            req.terminal,
        )?;
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let pids = self.manager.pids(&req.id)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.manager.pause(&req.id)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.manager.resume(&req.id)?;
        Ok(api::Empty::default())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(TaskError::Unimplemented(format!(
            "checkpoint of {}: cocoon microVMs cannot be checkpointed",
            req.id
        ))
        .into())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.manager.close_stdin(&req.id, &req.exec_id)?;
        }
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let rows = req.height.min(u16::MAX as u32) as u16;
        let cols = req.width.min(u16::MAX as u32) as u16;
        self.manager.resize_pty(&req.id, &req.exec_id, rows, cols)?;
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = parse(&req.resources.value, |e| {
            format!("update {}: resources are not valid: {e}", req.id)
        })?;
        self.manager.update(&req.id, resources)?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryStat, Metrics, PidsStat,
        };
        let stats = self.manager.stats(&req.id)?;
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: stats.pids_current,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: stats.cpu_usage_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: stats.memory_current_bytes,
                usage_limit: stats.memory_limit_bytes.unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.manager.task_pid(&req.id),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.manager.shut_down(req.now) {
            if !self.manager.events_published(EVENTS_BEFORE_EXIT_WAIT) {
                tracing::warn!(
                    "exiting with task events not yet published after {EVENTS_BEFORE_EXIT_WAIT:?}"
                );
            }
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
