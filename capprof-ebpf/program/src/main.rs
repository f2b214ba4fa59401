//! capprof's eBPF program: counts every `cap_capable` check in the kernel.
//!
//! Three entry points hook the same function; user space attaches exactly one set of them, chosen
//! from what the running kernel supports (see `capprof::attach`):
//!
//! * `fexit` on `cap_capable`: arguments (including `opts`) and the return value in one call;
//! * `kprobe` + `kretprobe` on `cap_capable`: arguments at entry, verdict at return;
//! * `tp_btf` on the `capability:cap_capable` tracepoint (Linux 6.14+): cap and verdict, no `opts`.
//!
//! All of them funnel into [`count_check`], the hot path. It must stay cheap: one per-CPU hash
//! lookup and a few reads, no stack walk, no ring-buffer write and no wake-up of user space. The
//! kernel stack and the task details are taken only when a key is first seen and when its per-CPU
//! count reaches a power of two ([`report_call_site`]).
#![no_std]
#![no_main]
// Inline BPF assembly for the atomic add (`lock *(u64 *)(r + 0) += r`).
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_REUSE_STACKID, BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::bpf_get_current_task_btf, generated::bpf_get_stack, generated::bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, tracing::StackIdContext,
    },
};
use aya_log_ebpf::warn;
use capprof_common::{
    CAP_OPT_INSETID, CAP_OPT_NOAUDIT, CGROUP_NAME_LEN, CallSiteKey, CapCapableAbi, CheckEvent,
    CheckKey, Counter, DEFAULT_CALL_SITES_ENTRIES, DEFAULT_CHECK_COUNTS_ENTRIES,
    DEFAULT_EVENTS_BYTES, DEFAULT_KERNEL_STACKS_ENTRIES, EVENT_STACK_DEPTH, HOT_SLOT_COUNT,
    HotSlot, PendingCheck, Verdict, check_flags, hot_slot_index, is_runtime_init_comm,
};

// Read-only globals, set by user space at load time. `read_volatile` keeps LLVM from folding the
// defaults in; the verifier still sees the real values because `.rodata` is frozen.
#[unsafe(no_mangle)]
static TARGET_CGROUP_ID: u64 = 0;
#[unsafe(no_mangle)]
static TASK_REAL_CRED_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CSS_SET_DFL_CGRP_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KERNFS_NODE_NAME_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CRED_EUID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static PT_REGS_SYSCALL_NR_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CAP_CAPABLE_ABI: u32 = CapCapableAbi::Opts as u32;

/// `PF_KTHREAD` from `include/linux/sched.h`: kernel threads have no system call.
const PF_KTHREAD: u32 = 0x0020_0000;

#[map]
static CHECK_COUNTS: PerCpuHashMap<CheckKey, u64> =
    PerCpuHashMap::with_max_entries(DEFAULT_CHECK_COUNTS_ENTRIES, 0);

#[map]
static CALL_SITES: HashMap<CallSiteKey, u32> =
    HashMap::with_max_entries(DEFAULT_CALL_SITES_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static KERNEL_STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_KERNEL_STACKS_ENTRIES, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map]
static HOT_SLOTS: PerCpuArray<HotSlot> = PerCpuArray::with_max_entries(HOT_SLOT_COUNT, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::ALL.len() as u32, 0);

/// Arguments stashed by the kprobe for the kretprobe, per task (`pid_tgid`). `cap_capable` never
/// sleeps, so only as many entries are live as CPUs are inside it at once.
#[map]
static PENDING_CHECKS: HashMap<u64, PendingCheck> = HashMap::with_max_entries(4096, 0);

/// The `capability:cap_capable` tracepoint: `(cred, target_ns, capable_ns, cap, ret)`.
#[btf_tracepoint(function = "cap_capable")]
pub fn cap_capable_tp(ctx: BtfTracePointContext) -> i32 {
    let cred: u64 = ctx.arg(0);
    let cap: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    count_check(&ctx, Hook::Tracepoint, cred, cap, ret, None);
    0
}

/// Does nothing on the same tracepoint: the benchmark's floor for what any program there costs.
#[btf_tracepoint(function = "cap_capable")]
pub fn cap_capable_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Does nothing at fexit of `cap_capable`: the benchmark's floor for the fentry path.
#[fexit(function = "cap_capable")]
pub fn cap_capable_fexit_empty(_ctx: FExitContext) -> i32 {
    0
}

/// Does nothing at entry of `cap_capable`; with [`cap_capable_kretprobe_empty`], the benchmark's
/// floor for the kprobe path, which needs both probes.
#[kprobe(function = "cap_capable")]
pub fn cap_capable_kprobe_empty(_ctx: ProbeContext) -> u32 {
    0
}

/// Does nothing at return of `cap_capable` (see [`cap_capable_kprobe_empty`]).
#[kretprobe(function = "cap_capable")]
pub fn cap_capable_kretprobe_empty(_ctx: RetProbeContext) -> u32 {
    0
}

/// `int cap_capable(const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)`;
/// an fexit program sees the arguments followed by the return value.
#[fexit(function = "cap_capable")]
pub fn cap_capable_fexit(ctx: FExitContext) -> i32 {
    let cred: u64 = ctx.arg(0);
    let cap: i32 = ctx.arg(2);
    let raw_opts: u32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    count_check(&ctx, Hook::Fexit, cred, cap, ret, Some(raw_opts));
    0
}

#[kprobe(function = "cap_capable")]
pub fn cap_capable_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(cred), Some(cap), Some(raw_opts)) =
        (ctx.arg::<u64>(0), ctx.arg::<u32>(2), ctx.arg::<u32>(3))
    else {
        return 0;
    };
    let pending = PendingCheck {
        cred,
        cap,
        raw_opts,
    };
    // A failed insert only means the kretprobe will count an unmatched return.
    let _ = PENDING_CHECKS.insert(bpf_get_current_pid_tgid(), pending, 0);
    0
}

#[kretprobe(function = "cap_capable")]
pub fn cap_capable_kretprobe(ctx: RetProbeContext) -> u32 {
    let task = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { PENDING_CHECKS.get(task) }).copied() else {
        bump(Counter::UnmatchedReturns);
        return 0;
    };
    let _ = PENDING_CHECKS.remove(task);
    let ret: i32 = ctx.ret();
    count_check(
        &ctx,
        Hook::Kretprobe,
        pending.cred,
        pending.cap as i32,
        ret,
        Some(pending.raw_opts),
    );
    0
}

/// Which program is counting, for the two things that differ between them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Tracepoint,
    Fexit,
    Kretprobe,
}

impl Hook {
    /// The tracepoint and fexit programs receive `cred` as a BTF-typed pointer, which the verifier
    /// lets the program load from directly (a plain memory load, made fault-safe by the kernel); a
    /// kretprobe has a bare integer stashed by the kprobe and must use `bpf_probe_read_kernel`.
    fn cred_is_typed(self) -> bool {
        self != Hook::Kretprobe
    }

    /// Tracepoints and kprobes run with preemption disabled, so a read-modify-write of this CPU's
    /// counters cannot interleave with another check. BPF trampolines (fexit) only disable
    /// migration: another task can preempt the program on the same CPU, so fexit adds atomically
    /// and leaves the hot slots, whose claiming is not atomic, alone.
    fn preemptible(self) -> bool {
        self == Hook::Fexit
    }
}

/// The hot path shared by every attach mode.
#[inline(always)]
fn count_check<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: Hook,
    cred: u64,
    cap: i32,
    ret: i32,
    raw_opts: Option<u32>,
) {
    // SAFETY: returns the current task as a BTF-typed pointer; loads from it at offsets taken
    // from kernel BTF are checked by the verifier and made fault-safe by the kernel.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let cgroup_id = current_cgroup_id(task);
    let target = unsafe { core::ptr::read_volatile(&TARGET_CGROUP_ID) };
    if target != 0 && target != cgroup_id {
        return;
    }
    let (syscall_nr, mut flags) = current_syscall(task);
    flags |= cred_flags(task, cred, hook.cred_is_typed());
    flags |= runtime_init_flag(task);
    if let Some(raw_opts) = raw_opts {
        flags |= opts_flags(raw_opts);
    }
    let key = CheckKey {
        cgroup_id,
        cap: cap as u32,
        verdict: if ret == 0 {
            Verdict::Granted
        } else {
            Verdict::Denied
        } as u32,
        syscall_nr,
        flags,
    };
    let Some(count) = increment(&key, hook.preemptible()) else {
        bump(Counter::ChecksDropped);
        return;
    };
    if count.is_power_of_two() {
        report_call_site(ctx, task, key, raw_opts.unwrap_or(0));
    }
}

/// Adds one to the key's count on this CPU and returns the new count, or `None` when the key has
/// no hot slot and the aggregate map is full.
///
/// Most checks come from few keys, so each key first tries its hot slot, a per-CPU array entry
/// chosen by [`hot_slot_index`]: an array access and a compare instead of a hash-map lookup. The
/// first key to land in a slot owns it for good; others go to the hash map. A key is thus counted
/// in exactly one place per CPU and user space adds the two up, exactly.
#[inline(always)]
fn increment(key: &CheckKey, preemptible: bool) -> Option<u64> {
    if !preemptible && let Some(slot) = HOT_SLOTS.get_ptr_mut(hot_slot_index(key)) {
        // SAFETY: this CPU's slot; preemption is disabled (see `Hook::preemptible`).
        let slot = unsafe { &mut *slot };
        if slot.count == 0 {
            slot.key = *key;
            slot.count = 1;
            return Some(1);
        }
        if slot.key == *key {
            slot.count += 1;
            return Some(slot.count);
        }
    }
    if let Some(count) = CHECK_COUNTS.get_ptr_mut(key) {
        return Some(add_one(count, preemptible));
    }
    match CHECK_COUNTS.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => Some(1),
        // Another program on this CPU inserted the key between our lookup and insert.
        Err(_) => CHECK_COUNTS
            .get_ptr_mut(key)
            .map(|count| add_one(count, preemptible)),
    }
}

/// Adds one to a counter of this CPU and returns the new value; atomically where the program can
/// be preempted.
#[inline(always)]
fn add_one(count: *mut u64, preemptible: bool) -> u64 {
    // SAFETY: `count` points into a map value of this CPU.
    unsafe {
        if preemptible {
            core::arch::asm!("lock *(u64 *)({count} + 0) += {one}", count = in(reg) count, one = in(reg) 1u64);
            *count
        } else {
            *count += 1;
            *count
        }
    }
}

/// `bpf_get_current_cgroup_id()` without the helper call: `task->cgroups->dfl_cgrp->kn->id`,
/// four loads the verifier checks against kernel BTF.
#[inline(always)]
fn current_cgroup_id(task: u64) -> u64 {
    // SAFETY: a BTF-typed kernfs node.
    unsafe { load(current_cgroup_node(task), &KERNFS_NODE_ID_OFFSET) }
}

/// The kernfs node of the task's cgroup v2 directory.
#[inline(always)]
fn current_cgroup_node(task: u64) -> u64 {
    // SAFETY: each pointer comes from a BTF-typed load of the previous object, at offsets from
    // kernel BTF; tracing programs run inside an RCU read-side section, which `cgroups` needs.
    unsafe {
        let css_set: u64 = load(task, &TASK_CGROUPS_OFFSET);
        let cgroup: u64 = load(css_set, &CSS_SET_DFL_CGRP_OFFSET);
        load(cgroup, &CGROUP_KN_OFFSET)
    }
}

/// Reads a field of a BTF-typed kernel object.
///
/// # Safety
/// `base` must be a pointer the verifier knows as BTF-typed and `offset` a field offset of that
/// type read from kernel BTF.
#[inline(always)]
unsafe fn load<T: Copy>(base: u64, offset: &'static u32) -> T {
    let offset = unsafe { core::ptr::read_volatile(offset) } as u64;
    unsafe { core::ptr::read_volatile((base + offset) as *const T) }
}

/// The system call the task is in, with [`check_flags::NO_SYSCALL`] when there is none.
#[inline(always)]
fn current_syscall(task: u64) -> (i32, u32) {
    let no_syscall = (-1, check_flags::NO_SYSCALL);
    // SAFETY: `task` comes from `bpf_get_current_task_btf`.
    let task_flags: u32 = unsafe { load(task, &TASK_FLAGS_OFFSET) };
    if task_flags & PF_KTHREAD != 0 {
        return no_syscall;
    }
    // SAFETY: `bpf_task_pt_regs` returns the task's saved user registers as a BTF-typed pointer.
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as u64;
    let nr: i64 = unsafe { load(regs, &PT_REGS_SYSCALL_NR_OFFSET) };
    // Interrupt and exception entries store negative values here.
    if (0..=i64::from(i32::MAX)).contains(&nr) {
        (nr as i32, 0)
    } else {
        no_syscall
    }
}

/// [`check_flags::FOREIGN_CRED`] and [`check_flags::NONROOT_EUID`] for the checked `cred`.
#[inline(always)]
fn cred_flags(task: u64, cred: u64, cred_is_typed: bool) -> u32 {
    let mut flags = 0;
    // SAFETY: `task` comes from `bpf_get_current_task_btf`.
    let real_cred: u64 = unsafe { load(task, &TASK_REAL_CRED_OFFSET) };
    if real_cred != cred {
        flags |= check_flags::FOREIGN_CRED;
    }
    let euid = if cred_is_typed {
        // SAFETY: the tracepoint and fexit hand `cred` over as a BTF-typed `struct cred *`.
        Some(unsafe { load::<u32>(cred, &CRED_EUID_OFFSET) })
    } else {
        let offset = unsafe { core::ptr::read_volatile(&CRED_EUID_OFFSET) } as u64;
        unsafe { bpf_probe_read_kernel((cred + offset) as *const u32) }.ok()
    };
    if euid != Some(0) {
        flags |= check_flags::NONROOT_EUID;
    }
    flags
}

/// [`check_flags::RUNTIME_INIT`] when the task's name is a container runtime's init.
#[inline(always)]
fn runtime_init_flag(task: u64) -> u32 {
    // SAFETY: `task` comes from `bpf_get_current_task_btf`; `comm` is at least 16 bytes.
    let comm: u64 = unsafe { load(task, &TASK_COMM_OFFSET) };
    if is_runtime_init_comm(comm) {
        check_flags::RUNTIME_INIT
    } else {
        0
    }
}

/// Normalises the 4th argument of `cap_capable` into [`check_flags`] bits.
#[inline(always)]
fn opts_flags(raw_opts: u32) -> u32 {
    let abi = unsafe { core::ptr::read_volatile(&CAP_CAPABLE_ABI) };
    let mut flags = check_flags::OPTS_KNOWN;
    if abi == CapCapableAbi::LegacyAudit as u32 {
        // `SECURITY_CAP_NOAUDIT` is 0, `SECURITY_CAP_AUDIT` is 1; there was no INSETID yet.
        if raw_opts == 0 {
            flags |= check_flags::OPTS_NOAUDIT;
        }
        return flags;
    }
    if raw_opts & CAP_OPT_NOAUDIT != 0 {
        flags |= check_flags::OPTS_NOAUDIT;
    }
    if raw_opts & CAP_OPT_INSETID != 0 {
        flags |= check_flags::OPTS_INSETID;
    }
    flags
}

/// Takes the kernel stack and, when this (key, stack) pair is new, sends one event to user space.
///
/// Events that do not fit in the ring buffer are counted as lost and retried the next time the
/// key's count reaches a power of two, because the call site is only remembered once its event
/// is reserved.
#[inline(never)]
fn report_call_site<C: EbpfContext + StackIdContext>(
    ctx: &C,
    task: u64,
    check: CheckKey,
    raw_opts: u32,
) {
    // The id only tells this key's call paths apart; the event carries the stack itself, so a
    // colliding stack that takes over another's id (BPF_F_REUSE_STACKID) mislabels nothing.
    let stack_id = match ctx.get_stackid(&KERNEL_STACKS, u64::from(BPF_F_REUSE_STACKID)) {
        Ok(id) => id,
        Err(errno) => {
            bump(Counter::StackErrors);
            i64::from(errno)
        }
    };
    let site = CallSiteKey { check, stack_id };
    // SAFETY: only presence is tested.
    if unsafe { CALL_SITES.get(&site) }.is_some() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CheckEvent>(0) else {
        bump(Counter::EventsLost);
        warn!(
            ctx,
            "capprof: event ring buffer full; call site of cap {} will be retried", check.cap
        );
        return;
    };
    if CALL_SITES.insert(&site, 0, u64::from(BPF_NOEXIST)).is_err() {
        // Either another CPU reported this site first, or the map is full.
        if unsafe { CALL_SITES.get(&site) }.is_none() {
            bump(Counter::CallSitesDropped);
        }
        entry.discard(0);
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved ring-buffer record, written field by field; the cgroup
    // name is read straight into it.
    unsafe {
        (*event).site = site;
        (*event).boot_time_ns = bpf_ktime_get_boot_ns();
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        (*event).raw_opts = raw_opts;
        (*event).cgroup_name = [0; CGROUP_NAME_LEN];
        let name: u64 = load(current_cgroup_node(task), &KERNFS_NODE_NAME_OFFSET);
        let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*event).cgroup_name);
        // Fills the rest of the buffer with zeros when the stack is shorter.
        let copied = bpf_get_stack(
            ctx.as_ptr(),
            (*event).stack.as_mut_ptr().cast(),
            core::mem::size_of::<[u64; EVENT_STACK_DEPTH]>() as u32,
            0,
        );
        (*event).stack_frames = if copied > 0 {
            copied as u32 / core::mem::size_of::<u64>() as u32
        } else {
            bump(Counter::StackErrors);
            0
        };
    }
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}

/// Adds one to a diagnostic counter of this CPU. Always atomically: the paths that count are
/// rare, and a preempted fexit program must not lose a count of dropped or lost data.
#[inline(always)]
fn bump(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        add_one(value, true);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
