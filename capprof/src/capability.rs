//! Linux capabilities: numbers, names and what each one allows.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

macro_rules! capabilities {
    ($($variant:ident = $number:literal, $name:literal, $summary:literal;)*) => {
        /// A Linux capability (`include/uapi/linux/capability.h`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Capability {
            $(#[doc = $summary] $variant = $number,)*
        }

        impl Capability {
            /// Every capability this build knows, in number order.
            pub const ALL: &'static [Capability] = &[$(Capability::$variant,)*];

            /// The kernel's name, `CAP_CHOWN`.
            pub const fn kernel_name(self) -> &'static str {
                match self { $(Capability::$variant => concat!("CAP_", $name),)* }
            }

            /// The name Docker and Compose use, `CHOWN`.
            pub const fn short_name(self) -> &'static str {
                match self { $(Capability::$variant => $name,)* }
            }

            /// One line on what the capability allows.
            pub const fn summary(self) -> &'static str {
                match self { $(Capability::$variant => $summary,)* }
            }
        }
    };
}

capabilities! {
    Chown = 0, "CHOWN", "change file owners and groups";
    DacOverride = 1, "DAC_OVERRIDE", "bypass file read, write and execute permission checks";
    DacReadSearch = 2, "DAC_READ_SEARCH", "bypass file read and directory search checks; open_by_handle_at";
    Fowner = 3, "FOWNER", "bypass checks that require owning the file (chmod, utime, ...)";
    Fsetid = 4, "FSETID", "keep set-user-ID and set-group-ID bits when a file is modified";
    Kill = 5, "KILL", "send signals to processes of other users";
    Setgid = 6, "SETGID", "change group ids";
    Setuid = 7, "SETUID", "change user ids";
    Setpcap = 8, "SETPCAP", "change capability bounding and inheritable sets";
    LinuxImmutable = 9, "LINUX_IMMUTABLE", "set immutable and append-only file attributes";
    NetBindService = 10, "NET_BIND_SERVICE", "bind ports below ip_unprivileged_port_start";
    NetBroadcast = 11, "NET_BROADCAST", "broadcast and listen to multicast (unused by the kernel)";
    NetAdmin = 12, "NET_ADMIN", "configure interfaces, routes, firewall and other network settings";
    NetRaw = 13, "NET_RAW", "open raw and packet sockets";
    IpcLock = 14, "IPC_LOCK", "lock memory (mlock, SHM_LOCK, huge pages)";
    IpcOwner = 15, "IPC_OWNER", "bypass System V IPC permission checks";
    SysModule = 16, "SYS_MODULE", "load and unload kernel modules";
    SysRawio = 17, "SYS_RAWIO", "raw I/O: iopl, ioperm, /dev/mem";
    SysChroot = 18, "SYS_CHROOT", "call chroot";
    SysPtrace = 19, "SYS_PTRACE", "trace and inspect any process";
    SysPacct = 20, "SYS_PACCT", "switch process accounting";
    SysAdmin = 21, "SYS_ADMIN", "a catch-all of administration: mount, sethostname, namespaces, and much more";
    SysBoot = 22, "SYS_BOOT", "reboot and load kernels";
    SysNice = 23, "SYS_NICE", "raise priorities and set real-time scheduling";
    SysResource = 24, "SYS_RESOURCE", "exceed resource limits and quotas";
    SysTime = 25, "SYS_TIME", "set the system clock";
    SysTtyConfig = 26, "SYS_TTY_CONFIG", "vhangup and privileged terminal ioctls";
    Mknod = 27, "MKNOD", "create device files";
    Lease = 28, "LEASE", "take leases on files the process does not own";
    AuditWrite = 29, "AUDIT_WRITE", "write to the kernel audit log";
    AuditControl = 30, "AUDIT_CONTROL", "configure kernel auditing";
    Setfcap = 31, "SETFCAP", "set file capabilities";
    MacOverride = 32, "MAC_OVERRIDE", "override mandatory access control";
    MacAdmin = 33, "MAC_ADMIN", "configure mandatory access control";
    Syslog = 34, "SYSLOG", "read and control the kernel log";
    WakeAlarm = 35, "WAKE_ALARM", "set alarms that wake the system";
    BlockSuspend = 36, "BLOCK_SUSPEND", "block system suspend";
    AuditRead = 37, "AUDIT_READ", "read the audit log through multicast netlink";
    Perfmon = 38, "PERFMON", "use perf_events and related performance monitoring";
    Bpf = 39, "BPF", "load BPF programs and create BPF maps";
    CheckpointRestore = 40, "CHECKPOINT_RESTORE", "checkpoint/restore operations (set_tid, map_files)";
}

impl Capability {
    /// The capability with this kernel number, if this build knows it.
    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(number).ok()?).copied()
    }

    /// The capability's kernel number.
    pub const fn number(self) -> u32 {
        self as u32
    }

    /// Docker's default capability set (moby `oci/caps/defaults.go`), granted unless dropped.
    pub const DOCKER_DEFAULTS: &'static [Capability] = &[
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ];

    /// Whether Docker grants this capability by default.
    pub fn is_docker_default(self) -> bool {
        Self::DOCKER_DEFAULTS.contains(&self)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}

/// A capability name that matches none this build knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability `{0}` (expected a name like CHOWN, CAP_CHOWN or chown)")]
pub struct UnknownCapability(pub String);

impl FromStr for Capability {
    type Err = UnknownCapability;

    /// Accepts the spellings found in Compose files and on command lines: `CAP_CHOWN`, `CHOWN`,
    /// `chown`, `cap_chown`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let upper = input.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
        Self::ALL
            .iter()
            .copied()
            .find(|cap| cap.short_name() == short)
            .ok_or_else(|| UnknownCapability(input.to_owned()))
    }
}

impl Serialize for Capability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.kernel_name())
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_positions() {
        for (index, cap) in Capability::ALL.iter().enumerate() {
            assert_eq!(cap.number() as usize, index, "{cap}");
            assert_eq!(Capability::from_number(index as u32), Some(*cap));
        }
        assert_eq!(Capability::from_number(41), None);
        assert_eq!(Capability::ALL.len(), 41);
    }

    #[test]
    fn parses_every_common_spelling() {
        for spelling in [
            "CAP_NET_RAW",
            "NET_RAW",
            "net_raw",
            "cap_net_raw",
            " NET_RAW ",
        ] {
            assert_eq!(
                spelling.parse::<Capability>(),
                Ok(Capability::NetRaw),
                "{spelling}"
            );
        }
        assert!("NET_RAWR".parse::<Capability>().is_err());
        assert_eq!(Capability::SysAdmin.to_string(), "CAP_SYS_ADMIN");
        assert_eq!(Capability::SysAdmin.short_name(), "SYS_ADMIN");
    }

    #[test]
    fn docker_grants_fourteen_by_default() {
        assert_eq!(Capability::DOCKER_DEFAULTS.len(), 14);
        assert!(Capability::NetBindService.is_docker_default());
        assert!(!Capability::SysAdmin.is_docker_default());
    }

    #[test]
    fn serializes_as_the_kernel_name() {
        let json = serde_json::to_string(&Capability::Chown).unwrap();
        assert_eq!(json, "\"CAP_CHOWN\"");
        assert_eq!(
            serde_json::from_str::<Capability>("\"chown\"").unwrap(),
            Capability::Chown
        );
    }
}
