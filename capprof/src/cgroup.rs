//! cgroup v2 paths and ids.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the task's cgroup in the v2 (unified)
//! hierarchy, which is the inode number of that cgroup's directory. This holds on pure v2 hosts
//! (mounted at `/sys/fs/cgroup`) and on hybrid hosts, where the v2 hierarchy is mounted beside the
//! v1 controllers (usually `/sys/fs/cgroup/unified`) and runc still gives each container its own
//! v2 directory.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The id of the root v2 cgroup (its directory is the mount's root inode).
pub const ROOT_CGROUP_ID: u64 = 1;

/// Errors locating cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a `cgroup2` entry in /proc/self/mountinfo); mount one with: mount -t cgroup2 none /sys/fs/cgroup/unified"
    )]
    NoUnifiedHierarchy,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a cgroup v2 directory (it is not under the cgroup2 mount {mount})")]
    NotInUnifiedHierarchy { path: PathBuf, mount: PathBuf },
    #[error("process {pid} has no cgroup v2 membership line (`0::/...`) in /proc/{pid}/cgroup")]
    NoUnifiedMembership { pid: u32 },
}

/// Where the v2 hierarchy is mounted, read from `/proc/self/mountinfo`.
pub fn unified_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        path: path.into(),
        source,
    })?;
    parse_unified_mount(&text).ok_or(CgroupError::NoUnifiedHierarchy)
}

fn parse_unified_mount(mountinfo: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mountpoint options [optional...] - fstype source superopts
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| std::str::from_utf8(digits).ok());
        if bytes[i] == b'\\'
            && let Some(code) = octal.and_then(|digits| u8::from_str_radix(digits, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id of a v2 cgroup directory: its inode number.
pub fn id_of(path: &Path) -> Result<u64, CgroupError> {
    let mount = unified_mount()?;
    let canonical = path.canonicalize().map_err(|source| CgroupError::Io {
        path: path.into(),
        source,
    })?;
    if !canonical.starts_with(&mount) {
        return Err(CgroupError::NotInUnifiedHierarchy {
            path: path.into(),
            mount,
        });
    }
    let metadata = std::fs::metadata(&canonical).map_err(|source| CgroupError::Io {
        path: path.into(),
        source,
    })?;
    Ok(metadata.ino())
}

/// The v2 cgroup path of a process relative to the v2 mount (`/docker/<id>`), from
/// `/proc/<pid>/cgroup`.
pub fn relative_path_of_pid(pid: u32) -> Result<String, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })?;
    parse_unified_membership(&text).ok_or(CgroupError::NoUnifiedMembership { pid })
}

fn parse_unified_membership(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
}

/// The absolute v2 cgroup directory and id of a process.
pub fn of_pid(pid: u32) -> Result<(PathBuf, u64), CgroupError> {
    let relative = relative_path_of_pid(pid)?;
    let directory = unified_mount()?.join(relative.trim_start_matches('/'));
    let id = id_of(&directory)?;
    Ok((directory, id))
}

/// A v2 cgroup directory capprof created, removed again on drop.
#[derive(Debug)]
pub struct OwnedCgroup {
    path: PathBuf,
    id: u64,
}

impl OwnedCgroup {
    /// Creates `name` directly under the v2 mount.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let path = unified_mount()?.join(name);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Io {
            path: path.clone(),
            source,
        })?;
        let id = match std::fs::metadata(&path) {
            Ok(metadata) => metadata.ino(),
            Err(source) => {
                let _ = std::fs::remove_dir(&path);
                return Err(CgroupError::Io { path, source });
            }
        };
        Ok(Self { path, id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id the kernel reports for tasks in this cgroup.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The `cgroup.procs` file: writing "0" to it moves the writer into the cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once its last task has been reaped, which may lag a moment.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        tracing::warn!(path = %self.path.display(), "could not remove a cgroup capprof created");
    }
}

/// The directory of the v2 cgroup with this id, searched under the v2 mount (ids are inode
/// numbers, so only a walk finds them). `None` once the cgroup is gone.
pub fn path_of_id(id: u64) -> Option<PathBuf> {
    let mount = unified_mount().ok()?;
    find_inode(&mount, id, 8)
}

fn find_inode(directory: &Path, id: u64, depth: u32) -> Option<PathBuf> {
    if std::fs::metadata(directory).ok()?.ino() == id {
        return Some(directory.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(directory)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .find_map(|entry| find_inode(&entry.path(), id, depth - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_on_hybrid_and_pure_hosts() {
        let hybrid = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            parse_unified_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_unified_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_unified_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
        let spaced = "30 1 0:26 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_unified_mount(spaced),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn reads_the_unified_membership_line() {
        let hybrid = "12:pids:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n";
        assert_eq!(
            parse_unified_membership(hybrid),
            Some("/docker/abc".to_owned())
        );
        let systemd = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            parse_unified_membership(systemd),
            Some("/system.slice/docker-abc.scope".to_owned())
        );
        assert_eq!(parse_unified_membership("1:cpu:/\n"), None);
    }

    #[test]
    fn own_cgroup_has_an_id() {
        match of_pid(std::process::id()) {
            Ok((directory, id)) => {
                assert!(directory.is_dir(), "{}", directory.display());
                assert!(id >= ROOT_CGROUP_ID);
                assert_eq!(path_of_id(id), Some(directory));
            }
            Err(CgroupError::NoUnifiedHierarchy) => {
                crate::test_support::skip_unless_ci("no cgroup v2 mount")
            }
            Err(other) => panic!("{other}"),
        }
    }
}
