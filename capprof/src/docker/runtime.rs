//! Recognises the container runtime's own processes among a container's checks.
//!
//! Between `docker start` and the entrypoint's `execve`, the runtime works inside the container's
//! cgroup: it joins namespaces, mounts the root file system, drops capabilities and installs the
//! seccomp filter. Those checks are the runtime's, not the application's, and must not become
//! `cap_add` entries. The runtime names these processes distinctively, so the task name (`comm`)
//! of a check's first sighting tells them apart. `comm` is cut by the kernel to 15 bytes.
//!
//! Sources for the names:
//! - runc: `libcontainer/nsenter/nsexec.c` renames its stages with `prctl(PR_SET_NAME)` to
//!   `runc:[0:PARENT]`, `runc:[1:CHILD]` and `runc:[2:INIT]`; the last one keeps the name until
//!   it execs the entrypoint. Before the rename the process is `runc`. Observed on this project's
//!   host (runc 1.1.5, Docker 20.10): checks in a new container's cgroup come from `runc`,
//!   `runc:[0:PARENT]`, `runc:[1:CHILD]` and `runc:[2:INIT]`, then from the entrypoint; a
//!   `docker exec` adds `runc:[2:INIT]` checks before the exec'd command.
//! - youki: `crates/libcontainer/src/process/container_main_process.rs` names its intermediate
//!   process `youki:[1:INTER]`, which names the init `youki:[2:INIT]`.
//! - runc and crun protect themselves (CVE-2019-5736) by running a copy of their binary from a
//!   memfd named `runc_cloned:/proc/self/exe` (runc's `libcontainer/nsenter/cloned_binary.c`) or
//!   `crun_cloned:/proc/self/exe`; `/proc/<pid>/exe` then reads
//!   `/memfd:runc_cloned:/proc/self/exe (deleted)`. Since Linux 6.14 (“exec: fix up
//!   /proc/pid/comm in the execveat(AT_EMPTY_PATH) case”) such a task is named after the memfd,
//!   `memfd:runc_clon`/`memfd:crun_clon` once cut; before, after the descriptor number (`6`),
//!   which only the executable's path can tell apart. crun does not rename its processes
//!   otherwise: they are `crun` until the exec.
//! - containerd's shim runs in the engine's cgroup, not the container's, but is listed so that a
//!   shim placed in a container's cgroup (`--cgroup-parent` setups) is not mistaken for the app.
//! - `docker run --init` starts Docker's `docker-init` (tini) as the container's pid 1. It is the
//!   runtime's, but it lives as long as the container: it is not setup.
//!
//! Not a runtime process, although it looks like one: `exe`. busybox (as in Debian's
//! busybox-static) runs its applets by executing `/proc/self/exe`, so `sh -c 'chown ...'` makes
//! checks as `exe`. Only the executable's path can say whether an `exe` task is a runtime.

use serde::Serialize;

/// A process of the container runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeProcess {
    /// runc before its init stage: the `runc` binary and its `runc:[0:PARENT]`,
    /// `runc:[1:CHILD]` stages.
    RuncBootstrap,
    /// runc's container init (`runc:[2:INIT]`), until it execs the entrypoint.
    RuncInit,
    /// youki's intermediate and init processes.
    Youki,
    /// crun before it execs the entrypoint.
    Crun,
    /// containerd's shim.
    ContainerdShim,
    /// Docker's injected init (`--init`), the container's pid 1 for its whole life.
    DockerInit,
}

impl RuntimeProcess {
    /// Whether the process only sets the container up: its checks happen before the entrypoint
    /// runs and are no need of the application.
    pub fn is_setup(self) -> bool {
        !matches!(self, Self::DockerInit)
    }

    /// The runtime's name, for reports.
    pub fn runtime(self) -> &'static str {
        match self {
            Self::RuncBootstrap | Self::RuncInit => "runc",
            Self::Youki => "youki",
            Self::Crun => "crun",
            Self::ContainerdShim => "containerd",
            Self::DockerInit => "docker",
        }
    }
}

/// Task names and the runtime process each one is. Names longer than 15 bytes appear cut.
const RUNTIME_COMMS: &[(&str, RuntimeProcess)] = &[
    ("runc", RuntimeProcess::RuncBootstrap),
    ("runc:[0:PARENT]", RuntimeProcess::RuncBootstrap),
    ("runc:[1:CHILD]", RuntimeProcess::RuncBootstrap),
    ("runc:[2:INIT]", RuntimeProcess::RuncInit),
    ("memfd:runc_clon", RuntimeProcess::RuncBootstrap),
    ("youki", RuntimeProcess::Youki),
    ("youki:[1:INTER]", RuntimeProcess::Youki),
    ("youki:[2:INIT]", RuntimeProcess::Youki),
    ("crun", RuntimeProcess::Crun),
    ("memfd:crun_clon", RuntimeProcess::Crun),
    ("containerd-shim", RuntimeProcess::ContainerdShim),
    ("docker-init", RuntimeProcess::DockerInit),
];

/// Executables (as `/proc/<pid>/exe` reads) that make a task a runtime process whatever its
/// name: a runtime re-executing itself from a memfd is named after a descriptor number on
/// kernels before 6.14.
const RUNTIME_EXECUTABLES: &[(&str, RuntimeProcess)] = &[
    ("/memfd:runc_cloned:", RuntimeProcess::RuncBootstrap),
    ("/memfd:crun_cloned:", RuntimeProcess::Crun),
];

/// The runtime process a check's first sighting came from, if any. `executable` is the task's
/// `/proc/<pid>/exe` when it could still be read; the name alone decides otherwise.
pub fn runtime_process(comm: &str, executable: Option<&str>) -> Option<RuntimeProcess> {
    if let Some((_, process)) = RUNTIME_COMMS.iter().find(|(name, _)| *name == comm) {
        return Some(*process);
    }
    let executable = executable?;
    RUNTIME_EXECUTABLES
        .iter()
        .find(|(prefix, _)| executable.starts_with(prefix))
        .map(|(_, process)| *process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_stages_are_setup() {
        for comm in ["runc", "runc:[0:PARENT]", "runc:[1:CHILD]"] {
            assert_eq!(
                runtime_process(comm, None),
                Some(RuntimeProcess::RuncBootstrap),
                "{comm}"
            );
        }
        let init = runtime_process("runc:[2:INIT]", None).unwrap();
        assert_eq!(init, RuntimeProcess::RuncInit);
        assert!(init.is_setup());
        assert_eq!(init.runtime(), "runc");
    }

    #[test]
    fn other_runtimes_are_recognised() {
        assert_eq!(
            runtime_process("youki:[2:INIT]", None),
            Some(RuntimeProcess::Youki)
        );
        assert_eq!(
            runtime_process("youki:[1:INTER]", None),
            Some(RuntimeProcess::Youki)
        );
        assert_eq!(runtime_process("crun", None), Some(RuntimeProcess::Crun));
        assert_eq!(
            runtime_process("memfd:crun_clon", None),
            Some(RuntimeProcess::Crun)
        );
        // containerd-shim-runc-v2 as the kernel stores it.
        assert_eq!(
            runtime_process("containerd-shim", None),
            Some(RuntimeProcess::ContainerdShim)
        );
    }

    #[test]
    fn docker_init_is_the_runtime_but_not_setup() {
        let init = runtime_process("docker-init", None).unwrap();
        assert_eq!(init, RuntimeProcess::DockerInit);
        assert!(!init.is_setup());
    }

    #[test]
    fn a_runtime_named_after_a_descriptor_is_known_by_its_executable() {
        assert_eq!(
            runtime_process("7", Some("/memfd:crun_cloned:/proc/self/exe (deleted)")),
            Some(RuntimeProcess::Crun)
        );
        assert_eq!(
            runtime_process("5", Some("/memfd:runc_cloned:/proc/self/exe (deleted)")),
            Some(RuntimeProcess::RuncBootstrap)
        );
        assert_eq!(runtime_process("7", None), None);
    }

    #[test]
    fn applications_are_not_the_runtime() {
        // busybox applets run as `exe`; names only similar to a runtime's stay the app's.
        for comm in [
            "exe",
            "sh",
            "nginx",
            "runcloud",
            "runc:[2:INIT]x",
            "Runc",
            "crund",
            "tini",
        ] {
            assert_eq!(runtime_process(comm, Some("/bin/busybox")), None, "{comm}");
        }
        assert_eq!(runtime_process("exe", None), None);
    }

    #[test]
    fn every_name_fits_in_a_task_name() {
        for (comm, _) in RUNTIME_COMMS {
            assert!(comm.len() <= 15, "{comm} is longer than the kernel keeps");
        }
    }
}
