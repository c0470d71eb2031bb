//! `cocoon-cri-pod SOCKET HANDLER IMAGE OTHER_IMAGE`: drives one Kubernetes-style pod through
//! containerd's CRI (what the kubelet does, without a kubelet): RunPodSandbox with host networking
//! (no CNI needed), two containers of IMAGE in it, ExecSync; `Exec` with a tty and with stdin
//! only, and `Attach` to a container on a tty, through the stream server's websocket (as
//! `kubectl exec -it` / `attach -it`); containers under RuntimeDefault and Localhost seccomp
//! profiles, dropped capabilities and no_new_privs, checked in init and exec'd processes; 200
//! ExecSyncs' exit codes; a container of OTHER_IMAGE (other layers) after the first is removed;
//! then Stop/RemovePodSandbox. Every id is containerd's own (64 hex digits). Prints one
//! `key=value` line per observation for the suite to check, and exits non-zero at the first CRI
//! call that fails (its error printed as `error=`). With `--network`: a pod with a network of its
//! own instead (CNI's), which serves the host (by its address and through a hostPort), and a second
//! such pod that fetches from it and then spoofs and floods.
//! `--report-stuck` prints what the microVMs here are doing ([`cocoon_tests::stuck_vms`]).
//! For the network benchmark: `--bench-up SOCKET HANDLER IMAGE` leaves a pod with a network of
//! its own serving the benchmark's files and prints `bench-pod=ID` and `bench-pod-ip=IP`;
//! `--bench-down SOCKET ID` removes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cocoon_tests::cri_stream::StreamSession;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    AttachRequest, Capability, ContainerConfig, ContainerMetadata, ContainerState,
    ContainerStatusRequest, CreateContainerRequest, DnsConfig, ExecRequest, ExecSyncRequest,
    ImageSpec, ImageStatusRequest, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, PortMapping, Protocol, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, SecurityProfile, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod's sandbox (pause) command, recognisable from inside a container sharing its PID
/// namespace.
const KEEP_RUNNING: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

/// The timeout an ExecSync asks for, and how long its answer may take.
const EXEC_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_SYNC_ANSWER: Duration = Duration::from_secs(90);
/// The longest any other CRI call may take (RunPodSandbox boots a VM).
const CRI_CALL_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the pod of a failed step is given to go, all tries together: a stuck guest's VM is
/// stopped by the shim once its agent has not answered a signal for 30 s.
const REMOVAL_AFTER_FAILURE: Duration = Duration::from_secs(90);
/// Pod A's hostPort (its port 80), through CNI's portmap.
const HOST_PORT: u16 = 18080;
/// An address of the node itself: the gateway CNI's bridge takes (the suite's conflist).
const NODE_ADDRESS: &str = "10.88.0.1";
/// How long a server that should answer may take to (it may still be starting).
const SERVER_PATIENCE: Duration = Duration::from_secs(20);

struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// The pod's config, as CreateContainer repeats it.
    pod: PodSandboxConfig,
}

async fn connect(socket: PathBuf) -> Result<Cri> {
    let channel = Endpoint::try_from("http://[::]:0")?
        // Every call is bounded: one that hangs fails its step (and the driver removes its pod).
        .timeout(CRI_CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("connecting to containerd's CRI socket")?;
    Ok(Cri {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
        pod: pod_config(),
    })
}

fn namespaces(pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "cocoon-pod".into(),
            uid: "cocoon-pod-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // As the kubelet does: a host-network pod keeps the node's name (and UTS namespace).
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(NamespaceMode::Pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Cri {
    /// RunPodSandbox of a pod named `name` with a network of its own and the hostPorts `ports`;
    /// it becomes `self.pod`, the config CreateContainer repeats.
    async fn run_network_pod(
        &mut self,
        name: &str,
        handler: &str,
        ports: Vec<PortMapping>,
    ) -> Result<String> {
        self.pod = network_pod_config(name);
        self.pod.port_mappings = ports;
        Ok(self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(self.pod.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .with_context(|| format!("RunPodSandbox of {name}, a pod with a network"))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// The address CNI gave pod `pod`, as PodSandboxStatus reports it.
    async fn pod_ip(&mut self, pod: &str) -> Result<String> {
        let status = self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: false,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner();
        Ok(status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet ends a pod.
    async fn remove_pod(&mut self, pod: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .context("StopPodSandbox")?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .context("RemovePodSandbox")?;
        Ok(())
    }

    async fn create(
        &mut self,
        pod_id: &str,
        name: &str,
        image: &str,
        pid: NamespaceMode,
    ) -> Result<String> {
        self.create_with(pod_id, name, image, pid, |_| {}).await
    }

    /// [`Self::create`], with the config changed by `customize` first.
    async fn create_with(
        &mut self,
        pod_id: &str,
        name: &str,
        image: &str,
        pid: NamespaceMode,
        customize: impl FnOnce(&mut ContainerConfig),
    ) -> Result<String> {
        let mut config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), KEEP_RUNNING.into()],
            envs: vec![k8s_cri::v1::KeyValue {
                key: "WHO".into(),
                value: name.into(),
            }],
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            labels: HashMap::from([("cocoon-test".into(), name.into())]),
            ..Default::default()
        };
        customize(&mut config);
        let id = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(self.pod.clone()),
            })
            .await
            .with_context(|| format!("CreateContainer {name}"))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {name}"))?;
        Ok(id)
    }

    /// ExecSync of `sh -c script`: (exit code, stdout, stderr). containerd, at the request's
    /// timeout, kills the process and then waits for its exit and its output without bound: past
    /// [`EXEC_SYNC_ANSWER`] this fails.
    async fn exec(&mut self, id: &str, script: &str) -> Result<(i32, String, String)> {
        let request = self.runtime.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: EXEC_SYNC_TIMEOUT.as_secs() as i64,
        });
        let Ok(reply) = tokio::time::timeout(EXEC_SYNC_ANSWER, request).await else {
            bail!(
                "ExecSync {script}: no answer in {} s (its timeout is {} s)",
                EXEC_SYNC_ANSWER.as_secs(),
                EXEC_SYNC_TIMEOUT.as_secs()
            );
        };
        let reply = reply
            .with_context(|| format!("ExecSync {script}"))?
            .into_inner();
        Ok((
            reply.exit_code,
            String::from_utf8_lossy(&reply.stdout).trim().to_string(),
            String::from_utf8_lossy(&reply.stderr).trim().to_string(),
        ))
    }

    /// The stream URL of an `Exec` of `cmd` (what `kubectl exec [-it]` asks for).
    async fn exec_url(&mut self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> Result<String> {
        Ok(self
            .runtime
            .exec(ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|c| c.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .with_context(|| format!("Exec {cmd:?}"))?
            .into_inner()
            .url)
    }

    /// The stream URL of an `Attach` to a container with a tty (`kubectl attach -it`).
    async fn attach_url(&mut self, id: &str) -> Result<String> {
        Ok(self
            .runtime
            .attach(AttachRequest {
                container_id: id.into(),
                stdin: true,
                tty: true,
                stdout: true,
                stderr: false,
            })
            .await
            .context("Attach")?
            .into_inner()
            .url)
    }

    async fn state(&mut self, id: &str) -> Result<(String, i32)> {
        let status = self
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?
            .into_inner()
            .status
            .context("ContainerStatus without a status")?;
        let state = ContainerState::try_from(status.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| status.state.to_string());
        Ok((state, status.exit_code))
    }

    async fn stop_and_remove(&mut self, id: &str) -> Result<(String, i32)> {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 10,
            })
            .await
            .context("StopContainer")?;
        let stopped = self.state(id).await?;
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .context("RemoveContainer")?;
        Ok(stopped)
    }
}

/// `cocoon-vmm` processes running now.
fn vmm_count() -> usize {
    cocoon_tests::stuck_vms::vmm_pids().len()
}

async fn scenario(socket: PathBuf, handler: &str, image: &str, other_image: &str) -> Result<()> {
    let mut cri = connect(socket).await?;
    let version = cri
        .runtime
        .version(VersionRequest::default())
        .await
        .context("Version")?
        .into_inner();
    println!(
        "cri-version={} {} {}",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    let image_known = cri
        .images
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .context("ImageStatus")?
        .into_inner()
        .image
        .is_some();
    println!("image-known={image_known}");
    let vmms_before = vmm_count();

    let started = Instant::now();
    let pod = cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config()),
            runtime_handler: handler.into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    println!("pod-ready-ms={}", started.elapsed().as_millis());
    if let Err(e) = in_pod(&mut cri, &pod, image, other_image, vmms_before).await {
        // Leave nothing for the suite's leak check (or a rerun's RunPodSandbox of the same name)
        // to trip over: the failure is this one. After a VM went away, CRI may still call a
        // container running until it has handled the shim's exit events: a few tries, bounded
        // in all (a stuck VM's pod may not go at all). First, what the pod's VM is doing.
        print!("{}", cocoon_tests::stuck_vms::report());
        let deadline = Instant::now() + REMOVAL_AFTER_FAILURE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Ok(Ok(())) = tokio::time::timeout(left, cri.remove_pod(&pod)).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        return Err(e);
    }
    cri.remove_pod(&pod).await?;
    let pods = cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items
        .len();
    let containers = cri
        .runtime
        .list_containers(ListContainersRequest::default())
        .await
        .context("ListContainers")?
        .into_inner()
        .containers
        .len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vmm_count() > vmms_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "pods-left={pods} containers-left={containers} vmms-left={}",
        vmm_count() - vmms_before
    );
    Ok(())
}

/// The containers' part of the scenario, in the running pod `pod`.
async fn in_pod(
    cri: &mut Cri,
    pod: &str,
    image: &str,
    other_image: &str,
    vmms_before: usize,
) -> Result<()> {
    // A keeps a PID namespace of its own; B shares the pod's (and sees the sandbox's process).
    let a = cri
        .create(pod, "a", image, NamespaceMode::Container)
        .await?;
    let b = cri.create(pod, "b", image, NamespaceMode::Pod).await?;
    println!("vmms-for-the-pod={}", vmm_count() - vmms_before);
    println!(
        "state-a={} state-b={}",
        cri.state(&a).await?.0,
        cri.state(&b).await?.0
    );
    let boot_a = cri.exec(&a, "cat /proc/sys/kernel/random/boot_id").await?.1;
    let boot_b = cri.exec(&b, "cat /proc/sys/kernel/random/boot_id").await?.1;
    let boot_host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    println!(
        "one-kernel={} not-the-hosts={}",
        !boot_a.is_empty() && boot_a == boot_b,
        boot_a != boot_host.trim()
    );
    let who = "echo $WHO; tr '\\0' ' ' < /proc/1/cmdline";
    println!("a-sees={}", cri.exec(&a, who).await?.1.replace('\n', " | "));
    println!("b-sees={}", cri.exec(&b, who).await?.1.replace('\n', " | "));
    let (code, out, err) = cri.exec(&a, "echo to-out; echo to-err >&2; exit 7").await?;
    println!("exec-sync={code} {out} {err}");
    exec_with_a_tty(cri, &a).await?;
    exec_with_stdin(cri, &a).await?;
    // Each container has a root of its own: a file one writes the other does not see.
    cri.exec(&a, "echo mine > /only-a").await?;
    let root = "grep '^overlay / ' /proc/mounts | grep -o 'lowerdir=[^,]*'";
    println!(
        "roots={} {}",
        cri.exec(&a, root).await?.1,
        cri.exec(&b, root).await?.1
    );
    println!(
        "roots-apart={}",
        cri.exec(&b, "cat /only-a 2>/dev/null || echo absent")
            .await?
            .1
    );

    attach_with_a_tty(cri, pod, image).await?;
    confined_by_the_runtime_default(cri, pod, image).await?;
    confined_by_a_localhost_profile(cri, pod, image).await?;
    many_exec_syncs(cri, pod, image).await?;

    let (state, code) = cri.stop_and_remove(&a).await?;
    println!("a-stopped={state} {code}");
    // The slot A's root disk filled is free again: a third container, of an image with other
    // layers, takes it (for its layer disk) and another.
    let c = cri
        .create(pod, "c", other_image, NamespaceMode::Container)
        .await?;
    let (code, out, _) = cri
        .exec(
            &c,
            "echo $WHO; cat /only-a 2>/dev/null || echo fresh-root; cat /etc/gone",
        )
        .await?;
    println!("c-after-a={code} {}", out.replace('\n', " "));
    println!("c-root={}", cri.exec(&c, root).await?.1);
    println!("vmms-with-c={}", vmm_count() - vmms_before);
    cri.stop_and_remove(&b).await?;
    cri.stop_and_remove(&c).await?;
    Ok(())
}

/// The longest a stream (exec or attach) may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks a tty its size (`stty size`) until it answers `rows cols`: a resize travels apart from
/// the input, so the first answer may come before it arrived. False if it never did.
fn follow_resize(tty: &mut StreamSession, size: &str) -> Result<bool> {
    for _ in 0..20 {
        tty.input("stty size\n")?;
        if tty.wait_for(size, Duration::from_secs(1)).is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `kubectl exec -it ... -- sh`: a tty that follows a resize, typed input, the exit code.
async fn exec_with_a_tty(cri: &mut Cri, id: &str) -> Result<()> {
    let url = cri.exec_url(id, &["sh"], true, true).await?;
    let mut tty = StreamSession::open(&url)?;
    tty.resize(91, 37)?;
    let resized = follow_resize(&mut tty, "37 91")?;
    tty.input("echo typed-$((6*7))\n")?;
    tty.wait_for("typed-42", STREAM_TIMEOUT)?;
    tty.input("exit 5\n")?;
    let (_, ending) = tty.finish(STREAM_TIMEOUT)?;
    println!("exec-tty-resized={resized} exec-tty-ending={ending:?}");
    Ok(())
}

/// `kubectl exec -i ... -- sh -c ...`: input without a tty, stdout and stderr apart, the code.
async fn exec_with_stdin(cri: &mut Cri, id: &str) -> Result<()> {
    let script = "read line; echo \"got $line\"; echo to-err >&2; exit 3";
    let url = cri.exec_url(id, &["sh", "-c", script], false, true).await?;
    let mut stream = StreamSession::open(&url)?;
    stream.input("hello\n")?;
    let (out, ending) = stream.finish(STREAM_TIMEOUT)?;
    println!(
        "exec-stdin={} | {} | {ending:?}",
        out.stdout.trim(),
        out.stderr.trim()
    );
    Ok(())
}

/// `kubectl run -it` then `kubectl attach -it`: a container whose process is a shell on a tty.
async fn attach_with_a_tty(cri: &mut Cri, pod: &str, image: &str) -> Result<()> {
    let t = cri
        .create_with(pod, "t", image, NamespaceMode::Container, |c| {
            c.command = vec!["sh".into()];
            c.tty = true;
            c.stdin = true;
        })
        .await?;
    let url = cri.attach_url(&t).await?;
    let mut tty = StreamSession::open(&url)?;
    tty.resize(77, 22)?;
    let resized = follow_resize(&mut tty, "22 77")?;
    // An interactive shell waits out SIGTERM in its line editor: the shell gives way to a loop
    // that ends on it, so StopContainer ends the container the way it asks.
    tty.input(
        "echo attached-$((6*7)); exec sh -c \"trap 'exit 0' TERM; while :; do sleep 1; done\"\n",
    )?;
    tty.wait_for("attached-42", STREAM_TIMEOUT)?;
    tty.close();
    // Detaching leaves the container running.
    let after = cri.state(&t).await?.0;
    println!("attach-resized={resized} attach-typed=true after-detach={after}");
    // The shell must have become the loop before StopContainer: a SIGTERM the interactive shell
    // ignores is lost, and the loop's trap would never hear it.
    let pid1 = "i=0; until grep -q trap /proc/1/cmdline || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done; tr '\\0' ' ' < /proc/1/cmdline";
    println!("t-pid1={}", cri.exec(&t, pid1).await?.1);
    let (state, code) = cri.stop_and_remove(&t).await?;
    println!("t-stopped={state} {code}");
    Ok(())
}

fn security_context(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// `seccompProfile: RuntimeDefault`, `allowPrivilegeEscalation: false`, `capabilities.drop:
/// [CHOWN]`: the init process and an exec'd one are confined alike.
async fn confined_by_the_runtime_default(cri: &mut Cri, pod: &str, image: &str) -> Result<()> {
    let s = cri
        .create_with(pod, "s", image, NamespaceMode::Container, |c| {
            let context = security_context(c);
            context.seccomp = Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            });
            context.no_new_privs = true;
            context.capabilities = Some(Capability {
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            });
        })
        .await?;
    // PID 1 is the container's init (a PID namespace of its own), `self` the exec'd process.
    let status = "for p in 1 self; do grep -e '^Seccomp:' -e '^NoNewPrivs:' /proc/$p/status | tr -d '\t' | tr '\n' ' '; done";
    println!("runtime-default={}", cri.exec(&s, status).await?.1);
    let caps = "[ \"$(grep CapEff /proc/1/status)\" = \"$(grep CapEff /proc/self/status)\" ] && echo same-caps; touch /tmp/f; chown 1 /tmp/f 2>&1; echo chown=$?";
    println!(
        "dropped-caps={}",
        cri.exec(&s, caps).await?.1.replace('\n', " ")
    );
    cri.stop_and_remove(&s).await?;
    Ok(())
}

/// A Localhost profile that blocks sethostname, on a container that may otherwise call it
/// (CAP_SYS_ADMIN): EPERM in the init process and in an exec.
async fn confined_by_a_localhost_profile(cri: &mut Cri, pod: &str, image: &str) -> Result<()> {
    let profile = std::env::temp_dir().join("cocoon-cri-no-sethostname.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )?;
    let init =
        format!("hostname from-init 2>/tmp/init-err; echo $? > /tmp/init-code; {KEEP_RUNNING}");
    let l = cri
        .create_with(pod, "l", image, NamespaceMode::Container, |c| {
            c.command = vec!["sh".into(), "-c".into(), init];
            let context = security_context(c);
            context.seccomp = Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: profile.display().to_string(),
            });
            context.capabilities = Some(Capability {
                add_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            });
        })
        .await;
    let _ = std::fs::remove_file(&profile);
    let l = l?;
    let script = "sleep 0.5; echo init=$(cat /tmp/init-code) $(cat /tmp/init-err); hostname from-exec 2>&1; echo exec=$?; hostname";
    println!(
        "localhost-profile={}",
        cri.exec(&l, script).await?.1.replace('\n', " | ")
    );
    cri.stop_and_remove(&l).await?;
    Ok(())
}

/// 200 short ExecSyncs in a row, the first right after the container started: every exit code
/// exact (0, 1, 7, and 137 for one killed by SIGKILL).
async fn many_exec_syncs(cri: &mut Cri, pod: &str, image: &str) -> Result<()> {
    let x = cri
        .create(pod, "x", image, NamespaceMode::Container)
        .await?;
    let mut wrong = Vec::new();
    for i in 0..200 {
        let (script, expected) = match i % 4 {
            0 => ("grep -q ecc /proc/self/status", 0),
            1 => ("false", 1),
            2 => ("exit 7", 7),
            _ => ("kill -9 $$", 137),
        };
        let (code, _, err) = cri.exec(&x, script).await?;
        if code != expected {
            wrong.push(format!("#{i} `{script}` gave {code} {err}"));
        }
    }
    println!(
        "exec-sync-exact={}/200 wrong={:?}",
        200 - wrong.len(),
        wrong
    );
    cri.stop_and_remove(&x).await?;
    Ok(())
}

/// A pod named `name` with a network of its own (CNI's, from the pod network namespace), its DNS
/// as CRI asks.
fn network_pod_config(name: &str) -> PodSandboxConfig {
    let mut config = pod_config();
    if let Some(metadata) = config.metadata.as_mut() {
        metadata.name = format!("cocoon-{name}");
        metadata.uid = format!("cocoon-{name}-uid");
    }
    config.hostname = name.into();
    config.dns_config = Some(DnsConfig {
        servers: vec!["192.0.2.53".into()],
        searches: vec!["svc.example".into()],
        options: vec!["ndots:3".into()],
    });
    if let Some(options) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|c| c.namespace_options.as_mut())
    {
        options.network = NamespaceMode::Pod as i32;
    }
    config
}

/// `GET /` from `address` (IP:PORT), the body, retried for up to `patience` while nothing
/// answers.
fn http_get(address: &str, patience: Duration) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + patience;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let address = address
                .parse()
                .map_err(|e| std::io::Error::other(format!("{e}")))?;
            let mut stream =
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) => {
                return answer
                    .split_once("\r\n\r\n")
                    .map_or(answer.clone(), |(_, body)| body.trim().to_string())
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    format!("unreachable ({last})")
}

/// The pod gets CNI's address on a guest interface with the veth's MAC and MTU, serves the host
/// over it, and has the DNS CRI asked for; then it is removed.
async fn network_scenario(socket: PathBuf, handler: &str, image: &str) -> Result<()> {
    let mut cri = connect(socket).await?;
    // As a pod spec's `hostPort: 18080` on its port 80 asks.
    let host_port = PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: HOST_PORT.into(),
        host_ip: String::new(),
    };
    let pod = cri
        .run_network_pod("net-pod", handler, vec![host_port])
        .await?;
    let in_pod = async {
        let ip = cri.pod_ip(&pod).await?;
        println!("net-pod-ip={ip}");
        let web = cri
            .create_with(&pod, "web", image, NamespaceMode::Pod, |c| {
                c.command = vec![
                    "sh".into(),
                    "-c".into(),
                    "mkdir -p /www && echo served-by-the-pod > /www/index.html && exec httpd -f -p 80 -h /www".into(),
                ];
            })
            .await?;
        let (_, guest, _) = cri
            .exec(
                &web,
                "ip -o -4 addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip route | grep ^default",
            )
            .await?;
        println!("net-pod-guest={}", guest.replace('\n', " "));
        // What CNI gave the pod: its eth0 in the pod's namespace, as `ip` sees it there.
        for netns in std::fs::read_dir("/var/run/netns").into_iter().flatten().flatten() {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={}", netns.path().display()))
                .args(["ip", "link", "show", "eth0"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let words: Vec<&str> = text.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .copied()
                    .unwrap_or("?")
            };
            println!("net-pod-veth={} {}", after("link/ether"), after("mtu"));
        }
        println!("net-pod-vmm-netns={}", vmm_network_namespaces());
        let (_, dns, _) = cri.exec(&web, "cat /etc/resolv.conf").await?;
        println!("net-pod-dns={}", dns.replace('\n', " "));
        let served = |address: String| http_get(&address, SERVER_PATIENCE);
        println!("net-pod-fetch={}", served(format!("{ip}:80")));
        // Its hostPort, on an address of the node and on the node's loopback.
        println!(
            "net-pod-hostport-fetch={}",
            served(format!("{NODE_ADDRESS}:{HOST_PORT}"))
        );
        println!(
            "net-pod-hostport-loopback-fetch={}",
            served(format!("127.0.0.1:{HOST_PORT}"))
        );
        let pod_a = std::mem::replace(&mut cri.pod, network_pod_config("client-pod"));
        let from_pod_b = fetch_from_another_pod(&mut cri, handler, image, &ip).await;
        cri.pod = pod_a;
        from_pod_b
    }
    .await;
    let removed = cri.remove_pod(&pod).await;
    in_pod?;
    removed?;
    // Gone with the pod: portmap's rules for it.
    let gone = http_get(
        &format!("{NODE_ADDRESS}:{HOST_PORT}"),
        Duration::from_secs(2),
    );
    println!("net-pod-hostport-after={gone}");
    Ok(())
}

/// Where each running cocoon-vmm's network namespace is: `pod` (one of /var/run/netns, CNI's),
/// `host` (this process's) or `other`, space-separated.
fn vmm_network_namespaces() -> String {
    use std::os::unix::fs::MetadataExt;
    let pods: Vec<String> = std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| format!("net:[{}]", m.ino()))
        .collect();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap_or_default();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !program.ends_with(b"cocoon-vmm") {
            continue;
        }
        let Ok(ns) = std::fs::read_link(entry.path().join("ns/net")) else {
            continue;
        };
        found.push(if ns == host {
            "host"
        } else if pods.iter().any(|p| ns.as_os_str() == p.as_str()) {
            "pod"
        } else {
            "other"
        });
    }
    found.join(" ")
}

/// Pod B's spoofing, each step's ping exit status printed (1: nothing answered): from an
/// IPv4 address not the pod's, from another MAC (its ARP and ICMP frames), a flood from that MAC
/// (the gateway's MAC set by hand with `arp -s`, so every frame goes out: 300 pings of 8000
/// bytes, six frames each), then honestly.
const SPOOFING: &str = "gw=$(ip route | awk '/^default/ { print $3 }'); \
    ping -c 1 -W 2 $gw > /dev/null 2>&1; gwmac=$(ip neigh show $gw | awk '{ print $5 }'); \
    ip addr add 10.88.255.250/16 dev eth0 2>&1; \
    ping -c 2 -W 1 -I 10.88.255.250 $gw > /dev/null 2>&1; echo \"ip=$?\"; \
    ip addr del 10.88.255.250/16 dev eth0 2>&1; mac=$(cat /sys/class/net/eth0/address); \
    ip neigh flush dev eth0 > /dev/null 2>&1; \
    ip link set eth0 address 02:00:00:00:66:66 2>&1 || echo mac-not-set; \
    ping -c 2 -W 1 $gw > /dev/null 2>&1; echo \"mac=$?\"; \
    arp -i eth0 -s $gw $gwmac 2>&1 || echo neigh-not-set; \
    timeout 30 ping -q -c 300 -i 0.01 -s 8000 -W 1 $gw > /dev/null 2>&1; echo \"flood=$?\"; \
    arp -i eth0 -d $gw > /dev/null 2>&1; \
    ip link set eth0 address $mac 2>&1 || echo mac-not-restored; \
    ping -c 2 -W 2 $gw > /dev/null 2>&1; echo \"honest=$?\"";

/// Pod B, a second pod with a network of its own, fetches pod A's page by pod A's address
/// (across CNI's bridge: two guests, two taps, two veths); then it is removed.
async fn fetch_from_another_pod(
    cri: &mut Cri,
    handler: &str,
    image: &str,
    pod_a_ip: &str,
) -> Result<()> {
    let name = cri.pod.hostname.clone();
    let pod_b = cri.run_network_pod(&name, handler, Vec::new()).await?;
    let fetched = async {
        println!("net-pod-b-ip={}", cri.pod_ip(&pod_b).await?);
        // CAP_NET_ADMIN, as a pod may ask: the spoofing below needs it.
        let client = cri
            .create_with(&pod_b, "client", image, NamespaceMode::Pod, |c| {
                if let Some(context) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
                    context.capabilities = Some(Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        ..Default::default()
                    });
                }
            })
            .await?;
        // Bounded: 20 tries of at most 3 s each, while pod A's server may still be starting.
        let script = format!(
            "i=0; until page=$(timeout 3 wget -q -O- http://{pod_a_ip}/ 2>&1) || [ $i -ge 20 ]; \
             do sleep 0.5; i=$((i + 1)); done; echo \"$page\""
        );
        let (_, page, _) = cri.exec(&client, &script).await?;
        println!("net-pod-b-fetch={}", page.replace('\n', " "));
        // A hostile guest: frames from an address and a MAC the pod was not given, and a flood
        // of them. The VMM drops them (counted, and logged at most every few seconds), and the
        // honest ones still go, in both pods.
        let (code, spoofed, err) = cri.exec(&client, SPOOFING).await?;
        println!("net-spoof={}", spoofed.replace('\n', " "));
        println!("net-spoof-exit={code} {}", err.replace('\n', " "));
        anyhow::Ok(())
    }
    .await;
    let removed = cri.remove_pod(&pod_b).await;
    fetched?;
    removed?;
    // Pod B's spoofing cost pod A nothing.
    let after = http_get(&format!("{pod_a_ip}:80"), SERVER_PATIENCE);
    println!("net-pod-fetch-after={after}");
    Ok(())
}

/// `--bench-up`: a pod with a network of its own (its guest on a tap, CNI's veth behind it)
/// serving the network benchmark's files, left running; its id and address printed.
async fn bench_up(socket: PathBuf, handler: &str, image: &str) -> Result<()> {
    let mut cri = connect(socket).await?;
    let pod = cri
        .run_network_pod("bench-pod", handler, Vec::new())
        .await?;
    let up = async {
        cri.create_with(&pod, "server", image, NamespaceMode::Pod, |c| {
            c.command = cocoon_tests::network_bench::server_command();
        })
        .await?;
        cri.pod_ip(&pod).await
    }
    .await;
    match up {
        Ok(ip) => {
            println!("bench-pod={pod}");
            println!("bench-pod-ip={ip}");
            Ok(())
        }
        Err(e) => {
            let _ = cri.remove_pod(&pod).await;
            Err(e)
        }
    }
}

/// `--bench-down`: the benchmark's pod, stopped and removed.
async fn bench_down(socket: PathBuf, pod: &str) -> Result<()> {
    connect(socket).await?.remove_pod(pod).await
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["--report-stuck"] {
        // For the suite's watchdog: what the VMs are doing while a step does not end.
        print!("{}", cocoon_tests::stuck_vms::report());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let [flag, socket, pod] = args.as_slice() {
        if flag == "--bench-down" {
            return runtime.block_on(bench_down(socket.into(), pod));
        }
    }
    if let [flag, socket, handler, image] = args.as_slice() {
        if flag == "--bench-up" {
            return runtime.block_on(bench_up(socket.into(), handler, image));
        }
        if flag == "--network" {
            if let Err(e) = runtime.block_on(network_scenario(socket.into(), handler, image)) {
                println!("error={e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
    }
    let [socket, handler, image, other_image] = args.as_slice() else {
        bail!("usage: cocoon-cri-pod [--network] CONTAINERD_SOCKET RUNTIME_HANDLER IMAGE [OTHER_IMAGE] | --report-stuck | --bench-up CONTAINERD_SOCKET RUNTIME_HANDLER IMAGE | --bench-down CONTAINERD_SOCKET POD");
    };
    if let Err(e) = runtime.block_on(scenario(socket.into(), handler, image, other_image)) {
        println!("error={e:#}");
        std::process::exit(1);
    }
    Ok(())
}
