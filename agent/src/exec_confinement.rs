//! What a process exec'd into a container keeps of the container's confinement, as runc gives
//! it: always the container's seccomp filter (an exec must never be a way out of it), and the
//! container's capabilities, rlimits, no_new_privs, AppArmor profile, SELinux label and OOM score
//! where the exec's own process spec says nothing. Masked and read-only paths, namespaces and the
//! cgroup come with the namespaces and cgroup the exec joins.
//!
//! Written here because libcontainer 0.7's tenant builder rebuilds the spec's `linux` from the
//! namespaces, cgroups path, personality and time offsets alone, so the seccomp profile never
//! reaches an exec'd process, and it takes a process file as it is, so a silent field is not
//! filled from the container. The filter is installed by [`SeccompExecutor`], libcontainer's hook
//! into the new process, at the point where libcontainer installs the init process's: after the
//! capabilities are dropped (no_new_privs is already set), before the process reports ready.

use std::collections::HashMap;

use cocoon_protocol::{AgentError, ErrorKind};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, Process, Spec};

/// The part of a container's spec its exec'd processes inherit.
#[derive(Clone, Debug)]
pub struct Confinement {
    process: Process,
    seccomp: Option<LinuxSeccomp>,
}

impl Confinement {
    /// The confinement of a container created from `spec` (after the agent's defaults).
    pub fn of(spec: &Spec) -> Self {
        Self {
            process: spec.process().clone().unwrap_or_default(),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        }
    }

    /// The process to exec: `requested`, with what it leaves out taken from the container's own
    /// process, as runc does (containerd sends a full process; other clients may not).
    pub fn exec_process(&self, requested: &Process) -> Process {
        let container = &self.process;
        let mut process = requested.clone();
        if process.capabilities().is_none() {
            process.set_capabilities(container.capabilities().clone());
        }
        if process.rlimits().as_ref().is_none_or(|r| r.is_empty()) {
            process.set_rlimits(container.rlimits().clone());
        }
        if process.no_new_privileges().is_none() {
            // The container's, which the agent's defaults always set.
            process.set_no_new_privileges(Some(container.no_new_privileges().unwrap_or(true)));
        }
        if process.apparmor_profile().is_none() {
            process.set_apparmor_profile(container.apparmor_profile().clone());
        }
        if process.selinux_label().is_none() {
            process.set_selinux_label(container.selinux_label().clone());
        }
        if process.oom_score_adj().is_none() {
            process.set_oom_score_adj(container.oom_score_adj());
        }
        process
    }

    /// The executor that confines an exec'd process with the container's filter. A filter that
    /// hands its decisions to a listener (SCMP_ACT_NOTIFY) has nobody to hand them to for an
    /// exec, and is refused rather than dropped.
    pub fn executor(&self) -> Result<SeccompExecutor, AgentError> {
        if let Some(seccomp) = &self.seccomp {
            let notify = LinuxSeccompAction::ScmpActNotify;
            let notifies = seccomp.default_action() == notify
                || seccomp
                    .syscalls()
                    .iter()
                    .flatten()
                    .any(|s| s.action() == notify);
            if notifies {
                return Err(AgentError::new(
                    ErrorKind::InvalidArgument,
                    "the container's seccomp profile uses SCMP_ACT_NOTIFY, which an exec'd process cannot be given: use a profile without it to exec into this container",
                ));
            }
        }
        Ok(SeccompExecutor {
            seccomp: self.seccomp.clone(),
        })
    }
}

/// libcontainer's default executor (look the program up, execvp it), with the container's
/// seccomp filter installed first.
#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    /// Runs in the new process once its capabilities are dropped, right where libcontainer
    /// installs an init process's filter; an error here fails the exec with its reason.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if let Some(seccomp) = &self.seccomp {
            match libcontainer::seccomp::initialize_seccomp(seccomp) {
                Ok(None) => {}
                Ok(Some(fd)) => {
                    let _ = nix::unistd::close(fd);
                    return Err(ExecutorValidationError::ArgValidationError(
                        "the container's seccomp profile asked for a notification listener".into(),
                    ));
                }
                Err(e) => {
                    return Err(ExecutorValidationError::ArgValidationError(format!(
                        "installing the container's seccomp filter: {e} (without no_new_privileges it needs CAP_SYS_ADMIN)"
                    )))
                }
            }
        }
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        Capability, LinuxBuilder, LinuxCapabilities, LinuxSeccompBuilder, LinuxSyscallBuilder,
        PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, SpecBuilder,
    };

    fn container_spec(seccomp: Option<LinuxSeccomp>) -> Spec {
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some([Capability::Chown].into()))
            .set_effective(Some([Capability::Chown].into()));
        let rlimit = PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(64u64)
            .soft(64u64)
            .build()
            .unwrap();
        let process = ProcessBuilder::default()
            .args(vec!["sleep".to_string()])
            .capabilities(caps)
            .rlimits(vec![rlimit])
            .no_new_privileges(true)
            .apparmor_profile("cocoon-test")
            .oom_score_adj(500)
            .build()
            .unwrap();
        let mut linux = LinuxBuilder::default().build().unwrap();
        linux.set_seccomp(seccomp);
        SpecBuilder::default()
            .process(process)
            .linux(linux)
            .build()
            .unwrap()
    }

    fn bare_exec() -> Process {
        let mut process = ProcessBuilder::default()
            .args(vec!["true".to_string()])
            .build()
            .unwrap();
        process
            .set_capabilities(None)
            .set_rlimits(None)
            .set_no_new_privileges(None)
            .set_apparmor_profile(None)
            .set_oom_score_adj(None);
        process
    }

    #[test]
    fn an_exec_silent_on_its_confinement_gets_the_containers() {
        let confinement = Confinement::of(&container_spec(None));
        let process = confinement.exec_process(&bare_exec());
        assert_eq!(process.args().as_ref().unwrap(), &["true"]);
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 1);
        assert_eq!(process.rlimits().as_ref().unwrap()[0].hard(), 64);
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.apparmor_profile().as_deref(), Some("cocoon-test"));
        assert_eq!(process.oom_score_adj(), Some(500));
    }

    #[test]
    fn what_an_exec_says_of_itself_stands() {
        let confinement = Confinement::of(&container_spec(None));
        let mut requested = bare_exec();
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some([Capability::Kill, Capability::Chown].into()));
        requested
            .set_capabilities(Some(caps))
            .set_no_new_privileges(Some(false))
            .set_oom_score_adj(Some(-5));
        let process = confinement.exec_process(&requested);
        let bounding = process.capabilities().clone().unwrap().bounding().clone();
        assert_eq!(bounding.unwrap().len(), 2);
        assert_eq!(process.no_new_privileges(), Some(false));
        assert_eq!(process.oom_score_adj(), Some(-5));
    }

    #[test]
    fn a_profile_that_notifies_cannot_confine_an_exec() {
        let syscall = LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string()])
            .action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap();
        let seccomp = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![syscall])
            .build()
            .unwrap();
        let confinement = Confinement::of(&container_spec(Some(seccomp.clone())));
        let e = confinement.executor().err().expect("refused");
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("SCMP_ACT_NOTIFY"), "{}", e.message);

        let mut plain = seccomp;
        plain.set_syscalls(None);
        let executor = Confinement::of(&container_spec(Some(plain)))
            .executor()
            .unwrap();
        assert!(executor.seccomp.is_some());
    }
}
