//! The mount table (`/proc/self/mountinfo`): which file systems are mounted where.

use std::path::{Path, PathBuf};

/// One mounted file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// The current mount table; empty when it cannot be read.
pub fn current() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// Where the first file system of `fstype` is mounted.
pub fn find<'a>(mounts: &'a [Mount], fstype: &str) -> Option<&'a Path> {
    mounts
        .iter()
        .find(|mount| mount.fstype == fstype)
        .map(|mount| mount.mount_point.as_path())
}

/// Whether a file system of `fstype` is mounted at `mount_point`.
pub fn is_mounted_at(mounts: &[Mount], fstype: &str, mount_point: &Path) -> bool {
    mounts
        .iter()
        .any(|mount| mount.fstype == fstype && mount.mount_point == mount_point)
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    // Fields: id parent major:minor root mountpoint options [optional...] - fstype source superopts
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as three-digit octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(code) if bytes[i] == b'\\' => {
                out.push(code);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_HOST: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 25 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
45 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw
50 23 0:40 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:7 - bpf bpf rw,mode=700
60 22 0:50 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_file_systems_by_type_and_place() {
        let mounts = parse_mountinfo(HYBRID_HOST);
        assert_eq!(mounts.len(), 6);
        assert_eq!(
            find(&mounts, "cgroup2"),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find(&mounts, "tracefs"),
            Some(Path::new("/sys/kernel/tracing"))
        );
        assert!(is_mounted_at(&mounts, "bpf", Path::new("/sys/fs/bpf")));
        assert!(!is_mounted_at(&mounts, "bpf", Path::new("/sys/fs/cgroup")));
        assert_eq!(find(&mounts, "debugfs"), None);
    }

    #[test]
    fn optional_fields_and_escapes_are_handled() {
        let mounts = parse_mountinfo(HYBRID_HOST);
        assert_eq!(
            mounts[4].fstype, "bpf",
            "the optional `shared:7` field is skipped"
        );
        assert_eq!(mounts[5].mount_point, Path::new("/mnt/with space"));
        assert!(parse_mountinfo("garbage without separator\n").is_empty());
    }
}
