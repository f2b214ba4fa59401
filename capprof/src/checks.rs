//! The aggregated view of capability checks: one [`CheckRecord`] per kernel key, with its count,
//! the task that first made it, and every distinct kernel call path seen for it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use capprof_common::{CheckEvent, CheckKey, Verdict, check_flags};
use serde::Serialize;

use crate::{
    capability::Capability,
    collector::{Collection, TracerCounters},
    kallsyms::KernelSymbols,
};

/// Who made a check, as the eBPF program saw it when it first saw the check's call site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sighting {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub boot_time_ns: u64,
}

/// The text before the first NUL.
fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl From<&CheckEvent> for Sighting {
    fn from(event: &CheckEvent) -> Self {
        Self {
            pid: event.pid,
            tgid: event.tgid,
            uid: event.uid,
            gid: event.gid,
            comm: nul_terminated(&event.comm),
            boot_time_ns: event.boot_time_ns,
        }
    }
}

/// One kernel call path that made a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallSite {
    /// Function names, innermost first, tracing frames removed. Empty when the stack was lost.
    pub stack: Arc<[String]>,
    pub sighting: Sighting,
}

/// `cap_capable`'s options as far as the attach path could see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Opts {
    /// The attach path saw `opts` (fexit, kprobe).
    Observed { noaudit: bool, insetid: bool },
    /// The tracepoint path cannot see `opts`.
    Unknown,
}

/// Everything known about one (cgroup, cap, verdict, syscall, flags) key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRecord {
    pub key: CheckKey,
    /// Checks counted, exact.
    pub count: u64,
    /// Distinct call paths, in the order they were first seen.
    pub call_sites: Vec<CallSite>,
}

impl CheckRecord {
    pub fn cgroup_id(&self) -> u64 {
        self.key.cgroup_id
    }

    /// The capability, or `None` for a number newer than this build.
    pub fn capability(&self) -> Option<Capability> {
        Capability::from_number(self.key.cap)
    }

    /// `CAP_CHOWN`, or `CAP_<number>` for capabilities this build does not know.
    pub fn capability_name(&self) -> String {
        self.capability()
            .map(|cap| cap.kernel_name().to_owned())
            .unwrap_or_else(|| format!("CAP_{}", self.key.cap))
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::from_raw(self.key.verdict).unwrap_or(Verdict::Denied)
    }

    /// The system call number, or `None` outside system calls.
    pub fn syscall_nr(&self) -> Option<u32> {
        (self.key.flags & check_flags::NO_SYSCALL == 0).then_some(self.key.syscall_nr as u32)
    }

    /// The system call's name (`sethostname`), `syscall_<n>` when unknown, or `-` outside one.
    pub fn syscall_name(&self) -> String {
        syscall_name(self.syscall_nr())
    }

    /// The checked credentials were not the task's own.
    pub fn foreign_cred(&self) -> bool {
        self.key.flags & check_flags::FOREIGN_CRED != 0
    }

    /// Made by a container runtime's init before the entrypoint ran.
    pub fn runtime_init(&self) -> bool {
        self.key.flags & check_flags::RUNTIME_INIT != 0
    }

    /// The checked credentials' effective uid is not 0.
    pub fn nonroot_euid(&self) -> bool {
        self.key.flags & check_flags::NONROOT_EUID != 0
    }

    pub fn opts(&self) -> Opts {
        if self.key.flags & check_flags::OPTS_KNOWN == 0 {
            return Opts::Unknown;
        }
        Opts::Observed {
            noaudit: self.key.flags & check_flags::OPTS_NOAUDIT != 0,
            insetid: self.key.flags & check_flags::OPTS_INSETID != 0,
        }
    }

    /// The first task seen making this check, when its event arrived.
    pub fn first_sighting(&self) -> Option<&Sighting> {
        self.call_sites
            .iter()
            .map(|site| &site.sighting)
            .min_by_key(|s| s.boot_time_ns)
    }
}

/// `sethostname`, `syscall_<n>` for numbers this build does not know, `-` for none.
pub fn syscall_name(nr: Option<u32>) -> String {
    match nr {
        None => "-".to_owned(),
        Some(nr) => syscalls::Sysno::new(nr as usize)
            .map(|sysno| sysno.name().to_owned())
            .unwrap_or_else(|| format!("syscall_{nr}")),
    }
}

/// All checks seen so far, merged from successive [`Collection`]s.
#[derive(Debug, Default)]
pub struct CheckTable {
    records: BTreeMap<CheckKey, CheckRecord>,
    /// The cgroup directory names the kernel reported, by cgroup id.
    cgroup_names: HashMap<u64, String>,
    /// Symbolised stacks by their instruction pointers. Keyed by content rather than stack id:
    /// the program lets the kernel reuse an id when two stacks collide in the stack map.
    stacks: HashMap<Vec<u64>, Arc<[String]>>,
    symbols: KernelSymbols,
    counters: TracerCounters,
}

impl CheckTable {
    /// An empty table that names stack frames with `symbols`.
    pub fn new(symbols: KernelSymbols) -> Self {
        Self {
            symbols,
            ..Self::default()
        }
    }

    /// Merges a collection; returns the keys whose count or call sites changed.
    pub fn apply(&mut self, collection: Collection) -> Vec<CheckKey> {
        let Collection {
            counts,
            events,
            counters,
        } = collection;
        self.counters = counters;
        let mut changed = Vec::new();
        for event in &events {
            let name = nul_terminated(&event.cgroup_name);
            if !name.is_empty() {
                self.cgroup_names
                    .entry(event.site.check.cgroup_id)
                    .or_insert(name);
            }
            let stack = self.symbolized_stack(event);
            let record = self.record_mut(event.site.check);
            record.call_sites.push(CallSite {
                stack,
                sighting: Sighting::from(event),
            });
            changed.push(event.site.check);
        }
        for (key, count) in counts {
            let record = self.record_mut(key);
            if record.count != count {
                record.count = count;
                changed.push(key);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    fn record_mut(&mut self, key: CheckKey) -> &mut CheckRecord {
        self.records.entry(key).or_insert_with(|| CheckRecord {
            key,
            count: 0,
            call_sites: Vec::new(),
        })
    }

    /// The event's kernel stack, symbolised once per distinct stack.
    fn symbolized_stack(&mut self, event: &CheckEvent) -> Arc<[String]> {
        let depth = (event.stack_frames as usize).min(event.stack.len());
        let frames = &event.stack[..depth];
        if let Some(stack) = self.stacks.get(frames) {
            return stack.clone();
        }
        let stack: Arc<[String]> =
            trim_tracing_frames(frames.iter().map(|&ip| self.symbols.describe(ip)).collect())
                .into();
        self.stacks.insert(frames.to_vec(), stack.clone());
        stack
    }

    /// Drops everything about these cgroups (see `KernelCollector::forget_cgroups`).
    pub fn forget_cgroups(&mut self, cgroups: &std::collections::HashSet<u64>) {
        self.records
            .retain(|key, _| !cgroups.contains(&key.cgroup_id));
        self.cgroup_names.retain(|id, _| !cgroups.contains(id));
    }

    /// The name of a cgroup's directory (a container id for Docker's), when an event carried it.
    pub fn cgroup_name(&self, cgroup_id: u64) -> Option<&str> {
        self.cgroup_names.get(&cgroup_id).map(String::as_str)
    }

    pub fn get(&self, key: &CheckKey) -> Option<&CheckRecord> {
        self.records.get(key)
    }

    /// Every record, ordered by key.
    pub fn records(&self) -> impl Iterator<Item = &CheckRecord> {
        self.records.values()
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, record: CheckRecord) {
        self.records.insert(record.key, record);
    }

    /// The program's counters as of the last collection.
    pub fn counters(&self) -> TracerCounters {
        self.counters
    }
}

/// Drops the frames of the tracing machinery itself (the BPF program, the trampoline, the
/// tracepoint), so that a stack starts at the capability check: `cap_capable` or its caller.
pub fn trim_tracing_frames(frames: Vec<String>) -> Vec<String> {
    let is_machinery = |frame: &str| {
        let name = frame.split('+').next().unwrap_or(frame);
        name.starts_with("bpf_")
            || name.starts_with("__bpf_")
            || name.starts_with("bpf_prog_")
            || name.starts_with("__traceiter_")
            || name.starts_with("trace_call_bpf")
            || name.starts_with("kprobe_")
            || name.starts_with("__kretprobe_trampoline")
            || name.starts_with("kretprobe_")
            || name.starts_with("rethook_")
            || name.starts_with("arch_rethook_")
            || name.starts_with("0x")
            || name == "trace_cap_capable"
    };
    let first_real = frames
        .iter()
        .position(|frame| !is_machinery(frame))
        .unwrap_or(frames.len());
    frames.into_iter().skip(first_real).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use capprof_common::CallSiteKey;

    fn key(cap: u32, verdict: Verdict, syscall_nr: i32) -> CheckKey {
        CheckKey {
            cgroup_id: 42,
            cap,
            verdict: verdict as u32,
            syscall_nr,
            flags: 0,
        }
    }

    /// An event for `check` whose stack map id is `stack_id` and whose own stack is `frames`.
    fn event(check: CheckKey, stack_id: i64, frames: &[u64], pid: u32, time: u64) -> CheckEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"test");
        let mut stack = [0u64; capprof_common::EVENT_STACK_DEPTH];
        stack[..frames.len()].copy_from_slice(frames);
        CheckEvent {
            site: CallSiteKey { check, stack_id },
            boot_time_ns: time,
            pid,
            tgid: pid,
            uid: 0,
            gid: 0,
            comm,
            raw_opts: 0,
            stack_frames: frames.len() as u32,
            cgroup_name: [0; capprof_common::CGROUP_NAME_LEN],
            stack,
        }
    }

    fn symbols() -> KernelSymbols {
        KernelSymbols::parse(
            "ffffffff81000000 T bpf_prog_1234_cap_capable_tp\n\
             ffffffff81000100 T __bpf_trace_cap_capable\n\
             ffffffff81000200 T cap_capable\n\
             ffffffff81000300 T security_capable\n\
             ffffffff81000400 T __x64_sys_sethostname\n",
        )
    }

    const SETHOSTNAME_STACK: [u64; 5] = [
        0xffffffff81000010,
        0xffffffff81000110,
        0xffffffff81000204,
        0xffffffff81000300,
        0xffffffff81000408,
    ];

    #[test]
    fn merges_counts_and_symbolizes_each_stack_once() {
        let sethostname = key(21, Verdict::Granted, 170);
        let mut table = CheckTable::new(symbols());
        let first = Collection {
            counts: vec![(sethostname, 1)],
            events: vec![event(sethostname, 7, &SETHOSTNAME_STACK, 100, 5)],
            counters: TracerCounters::default(),
        };
        assert_eq!(table.apply(first), vec![sethostname]);
        let second = Collection {
            counts: vec![(sethostname, 1000)],
            events: vec![event(sethostname, 7, &SETHOSTNAME_STACK, 101, 9)],
            counters: TracerCounters {
                events_lost: 3,
                ..Default::default()
            },
        };
        assert_eq!(table.apply(second), vec![sethostname]);
        assert!(
            Arc::ptr_eq(
                &table.get(&sethostname).unwrap().call_sites[0].stack,
                &table.get(&sethostname).unwrap().call_sites[1].stack
            ),
            "each distinct stack is symbolised once"
        );

        let record = table.get(&sethostname).unwrap();
        assert_eq!(record.count, 1000);
        assert_eq!(record.capability_name(), "CAP_SYS_ADMIN");
        assert_eq!(record.syscall_name(), "sethostname");
        assert_eq!(
            &*record.call_sites[0].stack,
            [
                "cap_capable+0x4",
                "security_capable",
                "__x64_sys_sethostname+0x8"
            ]
        );
        assert_eq!(record.first_sighting().unwrap().pid, 100);
        assert_eq!(record.first_sighting().unwrap().comm, "test");
        assert_eq!(table.counters().events_lost, 3);
    }

    #[test]
    fn each_event_keeps_its_own_stack_whatever_its_stack_id() {
        // The stack map gives a colliding stack the id of the one it replaces: two keys can
        // name the same id with different stacks, and each must keep its own.
        let sethostname = key(21, Verdict::Granted, 170);
        let brk = key(21, Verdict::Denied, 12);
        let brk_stack = [0xffffffff81000204, 0xffffffff81000300];
        let mut table = CheckTable::new(symbols());
        table.apply(Collection {
            counts: vec![(sethostname, 1), (brk, 1)],
            events: vec![
                event(sethostname, 7, &SETHOSTNAME_STACK, 1, 1),
                event(brk, 7, &brk_stack, 1, 2),
            ],
            counters: TracerCounters::default(),
        });
        assert_eq!(
            &*table.get(&sethostname).unwrap().call_sites[0].stack,
            [
                "cap_capable+0x4",
                "security_capable",
                "__x64_sys_sethostname+0x8"
            ]
        );
        assert_eq!(
            &*table.get(&brk).unwrap().call_sites[0].stack,
            ["cap_capable+0x4", "security_capable"]
        );
    }

    #[test]
    fn unchanged_keys_are_not_reported_and_lost_stacks_are_empty() {
        let chown = key(0, Verdict::Denied, 92);
        let mut table = CheckTable::new(symbols());
        let collection = Collection {
            counts: vec![(chown, 2)],
            events: vec![event(chown, -14, &[], 1, 1)],
            counters: TracerCounters::default(),
        };
        table.apply(collection.clone());
        let again = Collection {
            events: vec![],
            ..collection
        };
        assert!(table.apply(again).is_empty());
        let record = table.get(&chown).unwrap();
        assert!(record.call_sites[0].stack.is_empty());
        assert_eq!(record.verdict(), Verdict::Denied);
    }

    #[test]
    fn flags_decode() {
        let mut flagged = key(0, Verdict::Granted, -1);
        flagged.flags = check_flags::NO_SYSCALL
            | check_flags::FOREIGN_CRED
            | check_flags::OPTS_KNOWN
            | check_flags::OPTS_NOAUDIT;
        let record = CheckRecord {
            key: flagged,
            count: 1,
            call_sites: vec![],
        };
        assert_eq!(record.syscall_nr(), None);
        assert_eq!(record.syscall_name(), "-");
        assert!(record.foreign_cred());
        assert!(!record.nonroot_euid());
        assert_eq!(
            record.opts(),
            Opts::Observed {
                noaudit: true,
                insetid: false
            }
        );
        assert_eq!(syscall_name(Some(100_000)), "syscall_100000");
    }
}
