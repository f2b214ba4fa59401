//! Where Docker puts a container's v2 cgroup, and the way back from a cgroup to a container.
//!
//! The engine's cgroup driver decides the path under the v2 mount:
//! - `cgroupfs`: `<parent>/<id>`, the parent being `/docker` unless the container (or the daemon)
//!   sets another.
//! - `systemd`: `<slice path>/docker-<id>.scope`, the slice being `system.slice` unless set.
//!
//! On hybrid hosts (the engine reports cgroup version 1) runc still creates the container's
//! directory in the v2 hierarchy mounted beside the v1 controllers (`/sys/fs/cgroup/unified`),
//! with the same relative path; on pure v2 hosts the mount is `/sys/fs/cgroup`. The relative path
//! is therefore the same for both versions and only the mount differs, which
//! [`UnifiedHierarchy`] knows.

use std::path::PathBuf;

use super::container::is_container_id;
use crate::cgroup::{CgroupError, UnifiedHierarchy, relative_path_of_pid};

/// The engine's cgroup driver (`docker info`: `CgroupDriver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// The cgroup version the engine runs containers with (`docker info`: `CgroupVersion`).
/// Version 1 with a v2 mount is a hybrid host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// How the engine lays out container cgroups; `None` where the engine did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct CgroupLayout {
    pub driver: Option<CgroupDriver>,
    pub version: Option<CgroupVersion>,
}

impl CgroupLayout {
    /// The v2 paths, relative to the v2 mount (`/docker/<id>`), where the container's cgroup is,
    /// most likely first. For when the container's pid cannot tell (it exited already).
    /// With an unknown driver both layouts are candidates.
    pub fn candidate_paths(&self, container_id: &str, cgroup_parent: Option<&str>) -> Vec<String> {
        let parent = cgroup_parent.filter(|parent| !parent.is_empty());
        let cgroupfs = || cgroupfs_path(container_id, parent);
        let systemd = || systemd_path(container_id, parent);
        match self.driver {
            Some(CgroupDriver::Cgroupfs) => vec![cgroupfs()],
            Some(CgroupDriver::Systemd) => vec![systemd()],
            None => vec![cgroupfs(), systemd()],
        }
    }
}

fn cgroupfs_path(container_id: &str, parent: Option<&str>) -> String {
    let parent = parent.unwrap_or("/docker").trim_matches('/');
    if parent.is_empty() {
        format!("/{container_id}")
    } else {
        format!("/{parent}/{container_id}")
    }
}

fn systemd_path(container_id: &str, parent: Option<&str>) -> String {
    let slice = parent.unwrap_or("system.slice");
    let expanded = expand_slice(slice);
    if expanded.is_empty() {
        format!("/docker-{container_id}.scope")
    } else {
        format!("/{expanded}/docker-{container_id}.scope")
    }
}

/// systemd nests slices by their dash-separated prefixes: `a-b.slice` lives in
/// `a.slice/a-b.slice`; `-.slice` is the root. A parent that is not a slice name is a path.
fn expand_slice(slice: &str) -> String {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return slice.trim_matches('/').to_owned();
    };
    if stem == "-" || stem.is_empty() {
        return String::new();
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path.join("/")
}

/// Whose cgroup a v2 path (relative to the mount) is, judged by the path alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupOwner {
    /// Docker's own layout: `/docker/<id>` (cgroupfs) or `docker-<id>.scope` (systemd), or below.
    DockerContainer(String),
    /// A full container id in a layout Docker only uses with a custom cgroup parent, and other
    /// runtimes use too (Kubernetes pods); only the engine can say whether it is its container.
    MaybeContainer(String),
    /// Nothing in the path names a container.
    NotAContainer,
}

/// Reads the owner from a path like `/docker/<id>` or `/system.slice/docker-<id>.scope/init`.
/// Nested engines (Docker in Docker) appear as deeper ids; the outermost id is the container the
/// host's engine runs.
pub fn cgroup_owner(relative_path: &str) -> CgroupOwner {
    let segments: Vec<&str> = relative_path.split('/').filter(|s| !s.is_empty()).collect();
    for (index, segment) in segments.iter().enumerate() {
        if let Some(id) = segment
            .strip_prefix("docker-")
            .and_then(|rest| rest.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
        {
            return CgroupOwner::DockerContainer(id.to_owned());
        }
        if is_container_id(segment) {
            let id = (*segment).to_owned();
            return if index == 1 && segments[0] == "docker" {
                CgroupOwner::DockerContainer(id)
            } else {
                CgroupOwner::MaybeContainer(id)
            };
        }
    }
    CgroupOwner::NotAContainer
}

/// A v2 cgroup found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLocation {
    /// Relative to the v2 mount, with a leading `/`, as `/proc/<pid>/cgroup` writes it.
    pub relative_path: String,
    pub directory: PathBuf,
    /// The cgroup id: the directory's inode.
    pub id: u64,
}

/// The host's cgroup facts the container tracker needs, behind a trait so that the tracker can
/// be tested without containers.
pub trait CgroupLocator: Send + Sync + 'static {
    /// The v2 cgroup of a live process.
    fn of_pid(&self, pid: u32) -> Result<CgroupLocation, CgroupError>;
    /// A cgroup given by its path relative to the v2 mount; `None` when it does not exist.
    fn of_relative_path(&self, relative_path: &str) -> Result<Option<CgroupLocation>, CgroupError>;
    /// The path relative to the v2 mount of the live cgroup with this id; `None` when there is no
    /// such cgroup (any more).
    fn relative_path_of_id(&self, cgroup_id: u64) -> Result<Option<String>, CgroupError>;
}

/// The real host, through [`UnifiedHierarchy`].
#[derive(Clone, Debug)]
pub struct HostCgroups {
    hierarchy: UnifiedHierarchy,
}

impl HostCgroups {
    /// Locates the v2 mount.
    pub fn locate() -> Result<Self, CgroupError> {
        Ok(Self {
            hierarchy: UnifiedHierarchy::locate()?,
        })
    }

    pub fn hierarchy(&self) -> &UnifiedHierarchy {
        &self.hierarchy
    }
}

impl CgroupLocator for HostCgroups {
    fn of_pid(&self, pid: u32) -> Result<CgroupLocation, CgroupError> {
        let relative_path = relative_path_of_pid(pid)?;
        let directory = self.hierarchy.directory(&relative_path);
        let id = self.hierarchy.id_of(&directory)?;
        Ok(CgroupLocation {
            relative_path,
            directory,
            id,
        })
    }

    fn of_relative_path(&self, relative_path: &str) -> Result<Option<CgroupLocation>, CgroupError> {
        let directory = self.hierarchy.directory(relative_path);
        match self.hierarchy.id_of(&directory) {
            Ok(id) => Ok(Some(CgroupLocation {
                relative_path: relative_path.to_owned(),
                directory,
                id,
            })),
            Err(CgroupError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    fn relative_path_of_id(&self, cgroup_id: u64) -> Result<Option<String>, CgroupError> {
        Ok(self
            .hierarchy
            .path_of_id(cgroup_id)?
            .and_then(|path| self.hierarchy.relative(&path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "f5b0e9fcb1c3d63eec6943d721d7a23c0c109a56fe917a2dbcc162e8c273a298";

    fn layout(driver: Option<CgroupDriver>) -> CgroupLayout {
        CgroupLayout {
            driver,
            version: Some(CgroupVersion::V2),
        }
    }

    #[test]
    fn cgroupfs_puts_containers_under_docker_or_their_parent() {
        let cgroupfs = layout(Some(CgroupDriver::Cgroupfs));
        assert_eq!(
            cgroupfs.candidate_paths(ID, None),
            vec![format!("/docker/{ID}")]
        );
        assert_eq!(
            cgroupfs.candidate_paths(ID, Some("")),
            vec![format!("/docker/{ID}")]
        );
        assert_eq!(
            cgroupfs.candidate_paths(ID, Some("/ci/jobs/")),
            vec![format!("/ci/jobs/{ID}")]
        );
        assert_eq!(
            cgroupfs.candidate_paths(ID, Some("/")),
            vec![format!("/{ID}")]
        );
    }

    #[test]
    fn systemd_puts_containers_in_a_scope_in_their_slice() {
        let systemd = layout(Some(CgroupDriver::Systemd));
        assert_eq!(
            systemd.candidate_paths(ID, None),
            vec![format!("/system.slice/docker-{ID}.scope")]
        );
        assert_eq!(
            systemd.candidate_paths(ID, Some("ci-jobs-fast.slice")),
            vec![format!(
                "/ci.slice/ci-jobs.slice/ci-jobs-fast.slice/docker-{ID}.scope"
            )]
        );
        assert_eq!(
            systemd.candidate_paths(ID, Some("-.slice")),
            vec![format!("/docker-{ID}.scope")]
        );
    }

    #[test]
    fn the_version_does_not_change_the_relative_path() {
        for driver in [CgroupDriver::Cgroupfs, CgroupDriver::Systemd] {
            let hybrid = CgroupLayout {
                driver: Some(driver),
                version: Some(CgroupVersion::V1),
            };
            assert_eq!(
                hybrid.candidate_paths(ID, None),
                layout(Some(driver)).candidate_paths(ID, None)
            );
        }
    }

    #[test]
    fn an_unknown_driver_tries_both() {
        assert_eq!(
            layout(None).candidate_paths(ID, None),
            vec![
                format!("/docker/{ID}"),
                format!("/system.slice/docker-{ID}.scope")
            ]
        );
    }

    #[test]
    fn reads_the_container_from_its_cgroup_path() {
        let docker = CgroupOwner::DockerContainer(ID.to_owned());
        assert_eq!(cgroup_owner(&format!("/docker/{ID}")), docker);
        assert_eq!(cgroup_owner(&format!("/docker/{ID}/init.scope")), docker);
        assert_eq!(
            cgroup_owner(&format!("/system.slice/docker-{ID}.scope")),
            docker
        );
        assert_eq!(
            cgroup_owner(&format!("/ci.slice/ci-a.slice/docker-{ID}.scope/sub")),
            docker
        );
        let inner = "0".repeat(64);
        assert_eq!(
            cgroup_owner(&format!("/docker/{ID}/docker/{inner}")),
            docker
        );
        assert_eq!(
            cgroup_owner(&format!("/ci/jobs/{ID}")),
            CgroupOwner::MaybeContainer(ID.to_owned())
        );
        assert_eq!(
            cgroup_owner(&format!("/kubepods/burstable/pod1234/{ID}")),
            CgroupOwner::MaybeContainer(ID.to_owned())
        );
        for host in [
            "/",
            "/docker",
            "/system.slice/ssh.service",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/docker-short.scope",
        ] {
            assert_eq!(cgroup_owner(host), CgroupOwner::NotAContainer, "{host}");
        }
    }
}
