//! The memory layout shared by the eBPF program and user space.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and uses `u32` flags instead of
//! `bool`, so that both sides agree byte for byte. The size assertions at the bottom fail the build
//! of either side when a field is added without updating the other.
#![no_std]

/// Name of the per-CPU hash map that counts checks per [`CheckKey`].
pub const CHECK_COUNTS_MAP: &str = "CHECK_COUNTS";
/// Name of the hash map that remembers which (key, kernel stack) pairs were already reported.
pub const CALL_SITES_MAP: &str = "CALL_SITES";
/// Name of the stack-trace map whose ids tell a key's call paths apart in [`CALL_SITES_MAP`]
/// (the stacks themselves travel in the events).
pub const KERNEL_STACKS_MAP: &str = "KERNEL_STACKS";
/// Name of the ring buffer that carries [`CheckEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of [`HotSlot`]s.
pub const HOT_SLOTS_MAP: &str = "HOT_SLOTS";
/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the per-task scratch map the kprobe program uses to hand arguments to the kretprobe.
pub const PENDING_CHECKS_MAP: &str = "PENDING_CHECKS";

/// Name of the `tp_btf` program on the `cap_capable` tracepoint.
pub const TRACEPOINT_PROGRAM: &str = "cap_capable_tp";
/// Name of a `tp_btf` program on the same tracepoint that does nothing: the benchmark's floor.
pub const EMPTY_TRACEPOINT_PROGRAM: &str = "cap_capable_empty";
/// Name of the `fexit` program on `cap_capable`.
pub const FEXIT_PROGRAM: &str = "cap_capable_fexit";
/// Name of an `fexit` program on `cap_capable` that does nothing: the fentry path's floor.
pub const EMPTY_FEXIT_PROGRAM: &str = "cap_capable_fexit_empty";
/// Names of a `kprobe` and a `kretprobe` on `cap_capable` that do nothing: the kprobe path's floor.
pub const EMPTY_KPROBE_PROGRAMS: [&str; 2] =
    ["cap_capable_kprobe_empty", "cap_capable_kretprobe_empty"];
/// Name of the `kprobe` program on `cap_capable`.
pub const KPROBE_PROGRAM: &str = "cap_capable_kprobe";
/// Name of the `kretprobe` program on `cap_capable`.
pub const KRETPROBE_PROGRAM: &str = "cap_capable_kretprobe";
/// The kernel function and tracepoint every program hooks.
pub const HOOKED_FUNCTION: &str = "cap_capable";

/// Default capacity of [`CHECK_COUNTS_MAP`]: distinct (cgroup, cap, verdict, syscall, flags) keys.
pub const DEFAULT_CHECK_COUNTS_ENTRIES: u32 = 16 * 1024;
/// Default capacity of [`CALL_SITES_MAP`] (not preallocated: memory is used as sites appear).
/// The daemon frees the sites of removed cgroups, so this bounds the live containers' sites.
pub const DEFAULT_CALL_SITES_ENTRIES: u32 = 64 * 1024;
/// Default number of buckets of the stack-trace map (preallocated: about 1 KiB each).
pub const DEFAULT_KERNEL_STACKS_ENTRIES: u32 = 16 * 1024;
/// Default size of the event ring buffer in bytes (a power of two, a multiple of the page size).
/// 1 MiB holds about 1,900 events (544 bytes each with their stacks) between two polls.
pub const DEFAULT_EVENTS_BYTES: u32 = 1024 * 1024;

/// Names of the read-only globals user space sets at load time (`EbpfLoader::override_global`).
pub mod globals {
    /// `u64`: only count checks from this cgroup v2 id; 0 counts every cgroup.
    pub const TARGET_CGROUP_ID: &str = "TARGET_CGROUP_ID";
    /// `u32`: byte offset of `real_cred` in `struct task_struct`, read from kernel BTF.
    pub const TASK_REAL_CRED_OFFSET: &str = "TASK_REAL_CRED_OFFSET";
    /// `u32`: byte offset of `flags` in `struct task_struct`, read from kernel BTF.
    pub const TASK_FLAGS_OFFSET: &str = "TASK_FLAGS_OFFSET";
    /// `u32`: byte offset of `comm` in `struct task_struct`, read from kernel BTF.
    pub const TASK_COMM_OFFSET: &str = "TASK_COMM_OFFSET";
    /// `u32`: byte offset of `cgroups` in `struct task_struct`.
    pub const TASK_CGROUPS_OFFSET: &str = "TASK_CGROUPS_OFFSET";
    /// `u32`: byte offset of `dfl_cgrp` in `struct css_set`.
    pub const CSS_SET_DFL_CGRP_OFFSET: &str = "CSS_SET_DFL_CGRP_OFFSET";
    /// `u32`: byte offset of `kn` in `struct cgroup`.
    pub const CGROUP_KN_OFFSET: &str = "CGROUP_KN_OFFSET";
    /// `u32`: byte offset of `id` in `struct kernfs_node`.
    pub const KERNFS_NODE_ID_OFFSET: &str = "KERNFS_NODE_ID_OFFSET";
    /// `u32`: byte offset of `name` in `struct kernfs_node`.
    pub const KERNFS_NODE_NAME_OFFSET: &str = "KERNFS_NODE_NAME_OFFSET";
    /// `u32`: byte offset of `euid` in `struct cred`, read from kernel BTF.
    pub const CRED_EUID_OFFSET: &str = "CRED_EUID_OFFSET";
    /// `u32`: byte offset of the syscall-number slot in `struct pt_regs` (`orig_ax` on x86_64).
    pub const PT_REGS_SYSCALL_NR_OFFSET: &str = "PT_REGS_SYSCALL_NR_OFFSET";
    /// `u32`: one of [`super::CapCapableAbi`] as `u32`: how to read `cap_capable`'s 4th argument.
    pub const CAP_CAPABLE_ABI: &str = "CAP_CAPABLE_ABI";
}

/// How `cap_capable`'s fourth argument is to be read. Decided from kernel BTF, never from the
/// kernel version, because distributions backport the change.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapCapableAbi {
    /// `unsigned int opts` (Linux 5.1 and later): a bit set of `CAP_OPT_*`.
    Opts = 0,
    /// `int audit` (before Linux 5.1): `0` means `SECURITY_CAP_NOAUDIT`, `1` audited.
    LegacyAudit = 1,
}

/// Whether the kernel granted a capability check.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// `cap_capable` returned 0.
    Granted = 0,
    /// `cap_capable` returned a negative errno (always `-EPERM` in practice).
    Denied = 1,
}

impl Verdict {
    /// Converts the raw `u32` stored in a [`CheckKey`]; unknown values read as `None`.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Granted),
            1 => Some(Self::Denied),
            _ => None,
        }
    }
}

/// Bits of [`CheckKey::flags`].
pub mod check_flags {
    /// The checked `cred` is not the current task's `real_cred`: the kernel asked on behalf of
    /// another task, a file opener or a mounter.
    pub const FOREIGN_CRED: u32 = 1 << 0;
    /// The checked `cred`'s effective uid is not 0.
    pub const NONROOT_EUID: u32 = 1 << 1;
    /// `OPTS_NOAUDIT` and `OPTS_INSETID` were observed by the attach path (fexit, kprobe). When
    /// unset (the tracepoint path) the options are unknown, not absent.
    pub const OPTS_KNOWN: u32 = 1 << 2;
    /// `CAP_OPT_NOAUDIT`: a silent probe whose caller falls back when it is denied.
    pub const OPTS_NOAUDIT: u32 = 1 << 3;
    /// `CAP_OPT_INSETID`: the setid family of checks.
    pub const OPTS_INSETID: u32 = 1 << 4;
    /// The check ran outside a system call (kernel thread, interrupt, or a task in its exit path).
    pub const NO_SYSCALL: u32 = 1 << 5;
    /// The task is a container runtime's init (`runc:[2:INIT]`, `youki:[2:INIT]`, `crun`) setting
    /// the container up before the entrypoint's `execve` replaces it.
    pub const RUNTIME_INIT: u32 = 1 << 6;
}

/// Task names of container runtimes at work inside a container's cgroup, as (little-endian bytes,
/// mask) over the first eight bytes of `comm`: `runc init` starts as `runc` (or `memfd:runc_clon`
/// when runc runs from its sealed memfd copy) and names its stages `runc:[0:PARENT]`,
/// `runc:[1:CHILD]`, `runc:[2:INIT]`; youki does the same with `youki:[`; crun keeps its name.
pub const RUNTIME_INIT_COMMS: [(u64, u64); 7] = [
    (u64::from_le_bytes(*b"runc:[\0\0"), 0x0000_ffff_ffff_ffff),
    (u64::from_le_bytes(*b"runc\0\0\0\0"), 0x0000_00ff_ffff_ffff),
    (u64::from_le_bytes(*b"memfd:ru"), u64::MAX),
    (u64::from_le_bytes(*b"youki:[\0"), 0x00ff_ffff_ffff_ffff),
    (u64::from_le_bytes(*b"youki\0\0\0"), 0x0000_ffff_ffff_ffff),
    (u64::from_le_bytes(*b"crun\0\0\0\0"), 0x0000_00ff_ffff_ffff),
    (u64::from_le_bytes(*b"memfd:cr"), u64::MAX),
];

/// Whether a task whose `comm` starts with these eight bytes (little-endian) is a runtime's init.
#[inline(always)]
pub fn is_runtime_init_comm(first_eight: u64) -> bool {
    let mut found = false;
    for (prefix, mask) in RUNTIME_INIT_COMMS {
        found |= first_eight & mask == prefix;
    }
    found
}

/// The kernel's `CAP_OPT_NOAUDIT` bit in `cap_capable`'s `opts`.
pub const CAP_OPT_NOAUDIT: u32 = 1 << 1;
/// The kernel's `CAP_OPT_INSETID` bit in `cap_capable`'s `opts`.
pub const CAP_OPT_INSETID: u32 = 1 << 2;

/// What the kernel aggregates checks by. Cheap to build on every check: no stack walk.
///
/// The kernel stack is deliberately not part of the key: walking it costs about a microsecond per
/// check on these machines, several times bpftrace's whole per-check cost. Call sites are recorded
/// separately, in [`CallSiteKey`], when a key is first seen and each time its per-CPU count reaches
/// a power of two.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckKey {
    /// cgroup v2 id of the checking task (`bpf_get_current_cgroup_id`): the inode of its directory.
    pub cgroup_id: u64,
    /// Capability number (`CAP_CHOWN` = 0 ...).
    pub cap: u32,
    /// A [`Verdict`] as `u32`.
    pub verdict: u32,
    /// The system call the task is in, or -1 (see [`check_flags::NO_SYSCALL`]).
    pub syscall_nr: i32,
    /// [`check_flags`] bits.
    pub flags: u32,
}

/// How many hot slots each CPU has (a power of two).
pub const HOT_SLOT_COUNT: u32 = 256;

/// A per-CPU counter owned by the first key that hashed to it (`count == 0`: unclaimed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotSlot {
    pub key: CheckKey,
    pub count: u64,
}

/// The hot slot a key may own: a multiplicative hash of every field (the top bits of the
/// product, where all input bits have mixed), the same in the kernel and in tests.
#[inline(always)]
pub fn hot_slot_index(key: &CheckKey) -> u32 {
    let fields = u64::from(key.cap)
        | u64::from(key.verdict) << 8
        | u64::from(key.flags) << 16
        | u64::from(key.syscall_nr as u32) << 32;
    let mixed = (key.cgroup_id ^ fields.wrapping_mul(0xff51_afd7_ed55_8ccd))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> (64 - HOT_SLOT_COUNT.trailing_zeros())) as u32
}

/// One kernel call path under a [`CheckKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallSiteKey {
    pub check: CheckKey,
    /// Id in the stack-trace map, or a negative errno when the stack could not be taken.
    pub stack_id: i64,
}

/// Sent through the ring buffer the first time a [`CallSiteKey`] is seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckEvent {
    pub site: CallSiteKey,
    /// `bpf_ktime_get_boot_ns` at the check.
    pub boot_time_ns: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// Real gid of the task.
    pub gid: u32,
    /// Task name, NUL padded.
    pub comm: [u8; 16],
    /// Raw `opts` (or legacy `audit`) argument when [`check_flags::OPTS_KNOWN`] is set.
    pub raw_opts: u32,
    /// How many entries of `stack` hold frames (0 when the stack could not be taken).
    pub stack_frames: u32,
    /// The name of the task's cgroup v2 directory, NUL padded: for a container, its id
    /// (`<id>` with Docker's cgroupfs driver, `docker-<id>.scope` with systemd). Read here
    /// because a short-lived container's cgroup may be gone by the time user space looks.
    pub cgroup_name: [u8; CGROUP_NAME_LEN],
    /// The kernel stack of this check, innermost first (`bpf_get_stack`). Copied into the event
    /// rather than read from the stack-trace map by `site.stack_id`: that map replaces a stack
    /// on a hash collision, so by the time user space read an id it could hold another check's
    /// stack (seen here: a `brk` overcommit probe reported with a `kill` stack).
    pub stack: [u64; EVENT_STACK_DEPTH],
}

/// Frames kept of a check's kernel stack in its event. `cap_capable`'s callers, which the
/// classifier reads, are among the first few; the deepest stacks seen here have about 30.
pub const EVENT_STACK_DEPTH: usize = 48;

/// Bytes kept of a cgroup's name: enough for `docker-<64 hex>.scope`.
pub const CGROUP_NAME_LEN: usize = 80;

/// Indices into the per-CPU counters array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events that did not fit in the ring buffer. They are retried the next time the key's count
    /// reaches a power of two; aggregate counts are unaffected.
    EventsLost = 0,
    /// Checks not counted because the aggregate map was full. Must stay 0.
    ChecksDropped = 1,
    /// Call sites not recorded because the call-site map was full.
    CallSitesDropped = 2,
    /// Kernel stacks that could not be taken (`bpf_get_stackid` or `bpf_get_stack` failed).
    StackErrors = 3,
    /// kretprobe returns without a matching kprobe entry (kprobe path only).
    UnmatchedReturns = 4,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Self; 5] = [
        Self::EventsLost,
        Self::ChecksDropped,
        Self::CallSitesDropped,
        Self::StackErrors,
        Self::UnmatchedReturns,
    ];
}

/// Number of slots in the counters array.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32;

/// Arguments the kprobe stashes per task for the kretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCheck {
    /// Address of the checked `struct cred`.
    pub cred: u64,
    pub cap: u32,
    pub raw_opts: u32,
}

const _: () = assert!(core::mem::size_of::<CheckKey>() == 24);
const _: () = assert!(core::mem::size_of::<CallSiteKey>() == 32);
const _: () = assert!(core::mem::size_of::<CheckEvent>() == 160 + 8 * EVENT_STACK_DEPTH);
const _: () = assert!(core::mem::size_of::<PendingCheck>() == 16);
const _: () = assert!(core::mem::align_of::<CheckEvent>() == 8);
const _: () = assert!(core::mem::size_of::<HotSlot>() == 32);
const _: () = assert!(HOT_SLOT_COUNT.is_power_of_two());

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::is_runtime_init_comm;

    fn first_eight(comm: &str) -> u64 {
        let mut bytes = [0u8; 8];
        let len = comm.len().min(8);
        bytes[..len].copy_from_slice(&comm.as_bytes()[..len]);
        u64::from_le_bytes(bytes)
    }

    #[test]
    fn hot_slots_spread_keys_that_differ_in_any_field() {
        use super::{CheckKey, HOT_SLOT_COUNT, hot_slot_index};
        let base = CheckKey {
            cgroup_id: 1,
            cap: 21,
            verdict: 0,
            syscall_nr: 170,
            flags: 0,
        };
        let variants = [
            CheckKey {
                syscall_nr: 9,
                ..base
            },
            CheckKey { cap: 0, ..base },
            CheckKey { verdict: 1, ..base },
            CheckKey { flags: 2, ..base },
            CheckKey {
                cgroup_id: 2,
                ..base
            },
        ];
        let slots: std::collections::HashSet<u32> =
            variants.iter().chain([&base]).map(hot_slot_index).collect();
        assert!(
            slots.len() >= 5,
            "one field's difference must usually change the slot: {slots:?}"
        );
        // A whole cgroup's worth of keys spreads over the slots.
        let mut used = std::collections::HashSet::new();
        for syscall_nr in 0..300 {
            for cap in [0, 1, 21] {
                let slot = hot_slot_index(&CheckKey {
                    syscall_nr,
                    cap,
                    ..base
                });
                assert!(slot < HOT_SLOT_COUNT);
                used.insert(slot);
            }
        }
        assert!(used.len() > 200, "900 keys used only {} slots", used.len());
    }

    #[test]
    fn runtime_inits_are_recognised_and_nothing_else() {
        for comm in [
            "runc:[0:PARENT]",
            "runc:[1:CHILD]",
            "runc:[2:INIT]",
            "runc",
            "memfd:runc_clon",
            "youki:[2:INIT]",
            "youki",
            "crun",
            "memfd:crun_clon",
        ] {
            assert!(is_runtime_init_comm(first_eight(comm)), "{comm}");
        }
        for comm in [
            "runcible",
            "runc-init",
            "crunch",
            "httpd",
            "exe",
            "youkii",
            "memfd:other",
            "",
        ] {
            assert!(!is_runtime_init_comm(first_eight(comm)), "{comm}");
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers, with explicit padding
    // (checked by the size assertions above), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::CheckKey {}
    unsafe impl aya::Pod for super::CallSiteKey {}
    unsafe impl aya::Pod for super::CheckEvent {}
    unsafe impl aya::Pod for super::PendingCheck {}
    unsafe impl aya::Pod for super::HotSlot {}
}
