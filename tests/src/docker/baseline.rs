//! What a dockerd leaves on the host beyond its own directories, and putting it back.
//!
//! The harness starts dockerd without a bridge, iptables rules or IP forwarding, with its data,
//! exec root, socket and trust key in the harness's own directories. What remains outside them
//! is measured on this project's hosts (Debian 12, Docker 20.10, runc 1.1, containerd 1.6):
//! - `/run/docker/plugins` (dockerd's plugin discovery directory),
//! - `/run/containerd/s` (the shims' socket directory),
//! - a `docker` cgroup in every hierarchy, v1 and v2 (the cgroupfs driver's parent).
//!
//! The baseline records which of these existed before the harness first started dockerd; when
//! the last user stops it, the ones that did not are removed. Only empty directories are
//! removed, so anything another engine put there meanwhile stays.

use std::path::{Path, PathBuf};

/// Directories dockerd creates outside its roots, except the per-hierarchy cgroups.
const RUNTIME_DIRECTORIES: [&str; 2] = ["/run/docker", "/run/containerd"];

/// The name of the cgroupfs driver's parent cgroup.
const DOCKER_CGROUP: &str = "docker";

/// Which of dockerd's traces existed before the harness started it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBaseline {
    existing: Vec<PathBuf>,
}

impl HostBaseline {
    /// Looks at the host now.
    pub fn capture() -> Self {
        Self {
            existing: traces().into_iter().filter(|path| path.exists()).collect(),
        }
    }

    pub fn parse(text: &str) -> Self {
        Self {
            existing: text
                .lines()
                .filter(|line| !line.is_empty())
                .map(PathBuf::from)
                .collect(),
        }
    }

    pub fn serialize(&self) -> String {
        self.existing
            .iter()
            .map(|path| format!("{}\n", path.display()))
            .collect()
    }

    /// Removes the traces that were not there before; returns the ones that could not be
    /// removed (not empty: something else uses them).
    pub fn restore(&self) -> Vec<PathBuf> {
        traces()
            .into_iter()
            .filter(|path| path.exists() && !self.existing.contains(path))
            .filter(|path| !remove_empty_tree(path))
            .collect()
    }
}

/// Every place dockerd may leave a trace on this host.
fn traces() -> Vec<PathBuf> {
    let mut traces: Vec<PathBuf> = RUNTIME_DIRECTORIES.iter().map(PathBuf::from).collect();
    traces.extend(
        cgroup_mounts()
            .into_iter()
            .map(|mount| mount.join(DOCKER_CGROUP)),
    );
    traces
}

/// Mount points of cgroup hierarchies (v1 and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Removes a tree of empty directories bottom-up (cgroup directories count as empty when they
/// have no processes and no children). Whether the root is gone.
fn remove_empty_tree(root: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let is_directory = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if is_directory {
                remove_empty_tree(&entry.path());
            }
        }
    }
    std::fs::remove_dir(root).is_ok() || !root.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_file() {
        let baseline = HostBaseline {
            existing: vec![
                PathBuf::from("/run/docker"),
                PathBuf::from("/sys/fs/cgroup/memory/docker"),
            ],
        };
        assert_eq!(HostBaseline::parse(&baseline.serialize()), baseline);
    }

    #[test]
    fn removes_only_empty_directories() {
        let root = std::env::temp_dir().join(format!("capprof-baseline-{}", std::process::id()));
        let empty = root.join("empty/nested");
        let busy = root.join("busy");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::write(busy.join("socket"), b"").unwrap();

        assert!(remove_empty_tree(&root.join("empty")));
        assert!(!root.join("empty").exists());
        assert!(!remove_empty_tree(&busy));
        assert!(busy.join("socket").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
