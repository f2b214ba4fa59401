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

/// The v2 hierarchy as mounted on this host, located once and asked many times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnifiedHierarchy {
    mount: PathBuf,
}

impl UnifiedHierarchy {
    /// Finds the v2 mount in `/proc/self/mountinfo`.
    pub fn locate() -> Result<Self, CgroupError> {
        Ok(Self {
            mount: unified_mount()?,
        })
    }

    /// A hierarchy mounted at `mount` (tests, or a caller that already knows it).
    pub fn at(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: mount.into(),
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The directory of a path as `/proc/<pid>/cgroup` writes it (`/docker/<id>`).
    pub fn directory(&self, relative: &str) -> PathBuf {
        self.mount.join(relative.trim_start_matches('/'))
    }

    /// `path` relative to the mount, with a leading `/`, as `/proc/<pid>/cgroup` writes it;
    /// `None` when `path` is not under the mount.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let rest = path.strip_prefix(&self.mount).ok()?;
        Some(format!("/{}", rest.to_string_lossy()))
    }

    /// The cgroup id of a v2 cgroup directory: its inode number.
    pub fn id_of(&self, path: &Path) -> Result<u64, CgroupError> {
        let canonical = path.canonicalize().map_err(|source| CgroupError::Io {
            path: path.into(),
            source,
        })?;
        if !canonical.starts_with(&self.mount) {
            return Err(CgroupError::NotInUnifiedHierarchy {
                path: path.into(),
                mount: self.mount.clone(),
            });
        }
        let metadata = std::fs::metadata(&canonical).map_err(|source| CgroupError::Io {
            path: path.into(),
            source,
        })?;
        Ok(metadata.ino())
    }

    /// The absolute v2 cgroup directory and id of a process.
    pub fn of_pid(&self, pid: u32) -> Result<(PathBuf, u64), CgroupError> {
        let directory = self.directory(&relative_path_of_pid(pid)?);
        let id = self.id_of(&directory)?;
        Ok((directory, id))
    }

    /// The directory of the live v2 cgroup with this id, or `None` when no such cgroup exists
    /// (any more).
    ///
    /// Asks the kernel directly with a kernfs file handle (the id is the handle), which needs
    /// `CAP_DAC_READ_SEARCH`; without it, walks the hierarchy looking for the inode.
    pub fn path_of_id(&self, id: u64) -> Result<Option<PathBuf>, CgroupError> {
        match open_by_kernfs_id(&self.mount, id) {
            Ok(found) => Ok(found),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                find_directory_with_inode(&self.mount, id)
            }
            Err(source) => Err(CgroupError::Io {
                path: self.mount.clone(),
                source,
            }),
        }
    }
}

/// The cgroup id of a v2 cgroup directory: its inode number.
pub fn id_of(path: &Path) -> Result<u64, CgroupError> {
    UnifiedHierarchy::locate()?.id_of(path)
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
    UnifiedHierarchy::locate()?.of_pid(pid)
}

/// The directory of the live v2 cgroup with this id; see [`UnifiedHierarchy::path_of_id`].
pub fn path_of_id(id: u64) -> Result<Option<PathBuf>, CgroupError> {
    UnifiedHierarchy::locate()?.path_of_id(id)
}

/// `FILEID_KERNFS` from `include/linux/exportfs.h`: a handle holding the 64-bit kernfs node id,
/// which is also the cgroup id `bpf_get_current_cgroup_id()` returns.
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    node_id: u64,
}

fn open_by_kernfs_id(mount: &Path, id: u64) -> std::io::Result<Option<PathBuf>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let mount_dir = std::fs::File::open(mount)?;
    let mut handle = KernfsFileHandle {
        handle_bytes: size_of::<u64>() as u32,
        handle_type: FILEID_KERNFS,
        node_id: id,
    };
    // SAFETY: `handle` is a `struct file_handle` header followed by `handle_bytes` bytes of
    // handle, which is the layout the syscall reads; it only reads through the pointer.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_dir.as_raw_fd(),
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        // ESTALE: no node with this id; ENOENT: it was removed while being opened.
        return match error.raw_os_error() {
            Some(libc::ESTALE | libc::ENOENT) => Ok(None),
            _ => Err(error),
        };
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    let directory = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", directory.as_raw_fd()))?;
    Ok(Some(path))
}

/// The slow way for unprivileged callers: a depth-first walk of the v2 hierarchy.
fn find_directory_with_inode(mount: &Path, inode: u64) -> Result<Option<PathBuf>, CgroupError> {
    let mut pending = vec![mount.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            // Cgroups come and go while we walk.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CgroupError::Io {
                    path: directory,
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            if metadata.ino() == inode {
                return Ok(Some(entry.path()));
            }
            pending.push(entry.path());
        }
    }
    Ok(None)
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
    fn relative_paths_keep_the_leading_slash() {
        let hierarchy = UnifiedHierarchy::at("/sys/fs/cgroup/unified");
        let directory = hierarchy.directory("/docker/abc");
        assert_eq!(directory, Path::new("/sys/fs/cgroup/unified/docker/abc"));
        assert_eq!(
            hierarchy.relative(&directory),
            Some("/docker/abc".to_owned())
        );
        assert_eq!(hierarchy.relative(hierarchy.mount()), Some("/".to_owned()));
        assert_eq!(hierarchy.relative(Path::new("/tmp/x")), None);
    }

    #[test]
    fn finds_a_cgroup_directory_from_its_id() {
        let (directory, id) = match of_pid(std::process::id()) {
            Ok(found) => found,
            Err(CgroupError::NoUnifiedHierarchy) => {
                return crate::test_support::skip_unless_ci("no cgroup v2 mount");
            }
            Err(other) => panic!("{other}"),
        };
        let found = path_of_id(id).expect("look up own cgroup id");
        assert_eq!(
            found.map(|path| path.canonicalize().unwrap()),
            Some(directory.canonicalize().unwrap())
        );
        let mount = unified_mount().unwrap();
        assert_eq!(
            find_directory_with_inode(&mount, id)
                .unwrap()
                .map(|path| path.canonicalize().unwrap())
                .or_else(|| (id == ROOT_CGROUP_ID).then(|| mount.canonicalize().unwrap())),
            Some(directory.canonicalize().unwrap())
        );
    }

    #[test]
    fn an_id_no_cgroup_has_is_not_found() {
        if let Err(CgroupError::NoUnifiedHierarchy) = unified_mount() {
            return crate::test_support::skip_unless_ci("no cgroup v2 mount");
        }
        // Kernfs ids count up from 1; this one is far beyond any a booted kernel has handed out.
        assert_eq!(path_of_id(u64::MAX - 7).unwrap(), None);
    }

    #[test]
    fn own_cgroup_has_an_id() {
        match of_pid(std::process::id()) {
            Ok((directory, id)) => {
                assert!(directory.is_dir(), "{}", directory.display());
                assert!(id >= ROOT_CGROUP_ID);
                assert_eq!(path_of_id(id).unwrap(), Some(directory));
            }
            Err(CgroupError::NoUnifiedHierarchy) => {
                crate::test_support::skip_unless_ci("no cgroup v2 mount")
            }
            Err(other) => panic!("{other}"),
        }
    }
}
