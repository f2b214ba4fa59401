//! Decides what each observed check means for the recommendation.
//!
//! Every profile entry gets one [`CheckClass`] from the first rule in [`RULES`] that matches,
//! with the rule's reason kept as evidence. The rules combine several signals, never `NOAUDIT`
//! alone: the verdict, `opts` where the attach path observed it or the kernel call site (from the
//! stack) where it did not, whose credentials were checked, the container's phase (runtime setup
//! or application) and the checking task's uid. `docs/classification.md` explains each rule.

use serde::{Deserialize, Serialize};

use crate::{
    capability::Capability,
    docker::{RuntimeProcess, runtime_process},
    profile::{EntryKey, EntryVerdict, Example, Profile, ProfileEntry},
};
use capprof_common::check_flags;

/// What a check means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckClass {
    /// Granted, audited, and the service depends on it: goes into `cap_add`.
    Required,
    /// Needed but denied under the configuration profiled: the operation failed. Goes into
    /// `cap_add` so that it works.
    Missing,
    /// The kernel asked silently and falls back when refused (overcommit heuristics, seccomp or
    /// landlock installation, `*_noaudit` probes).
    Advisory,
    /// The container runtime's own work before the entrypoint ran.
    RuntimeSetup,
    /// The kernel checked credentials that are not the task's own (a file's opener, another
    /// task, a mounter).
    ForeignCred,
    /// Not needed: a narrower capability in an OR-chain suffices, or `cap_add` could not have
    /// changed the outcome (a non-root process).
    Superseded,
}

impl CheckClass {
    /// Whether checks of this class put their capability into `cap_add`.
    pub fn counts_as_need(self) -> bool {
        matches!(self, CheckClass::Required | CheckClass::Missing)
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckClass::Required => "required",
            CheckClass::Missing => "missing",
            CheckClass::Advisory => "advisory",
            CheckClass::RuntimeSetup => "runtime-setup",
            CheckClass::ForeignCred => "foreign-cred",
            CheckClass::Superseded => "superseded",
        }
    }
}

/// An entry with its class, the rule that decided it and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    pub entry: ProfileEntry,
    pub class: CheckClass,
    /// The rule's name (see `docs/classification.md`).
    pub rule: &'static str,
    pub reason: String,
    /// The capability this entry asks for in `cap_add` when it is not the checked one: a
    /// narrower alternative from an OR-chain (BPF instead of SYS_ADMIN), or DAC_OVERRIDE
    /// instead of DAC_READ_SEARCH for plain reads.
    pub recommend_instead: Option<Capability>,
}

/// What the rules look at besides the entry itself.
#[derive(Debug)]
pub struct Context<'a> {
    /// All entries of the profile, for rules that relate checks to each other.
    pub entries: &'a [ProfileEntry],
}

/// One row of the rule table.
pub struct Rule {
    pub name: &'static str,
    pub class: CheckClass,
    /// Returns the reason when the rule applies.
    pub applies: fn(&Context<'_>, &ProfileEntry) -> Option<RuleFinding>,
}

/// A rule's finding.
#[derive(Debug)]
pub struct RuleFinding {
    pub reason: String,
    pub recommend_instead: Option<Capability>,
}

impl RuleFinding {
    fn because(reason: impl Into<String>) -> Option<Self> {
        Some(Self {
            reason: reason.into(),
            recommend_instead: None,
        })
    }
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("class", &self.class)
            .finish()
    }
}

/// Kernel functions that probe a capability silently (`CAP_OPT_NOAUDIT`) and fall back when it
/// is refused. Used when the attach path cannot see `opts` (the tracepoint).
const SILENT_CALL_SITES: &[(&str, &str)] = &[
    (
        "cap_vm_enough_memory",
        "the overcommit heuristic only reserves a little more memory for CAP_SYS_ADMIN",
    ),
    (
        "security_vm_enough_memory_mm",
        "the overcommit heuristic only reserves a little more memory for CAP_SYS_ADMIN",
    ),
    (
        "__vm_enough_memory",
        "the overcommit heuristic only reserves a little more memory for CAP_SYS_ADMIN",
    ),
    (
        "seccomp_prepare_filter",
        "installing a seccomp filter works without it once no_new_privs is set",
    ),
    (
        "do_seccomp",
        "installing a seccomp filter works without it once no_new_privs is set",
    ),
    (
        "landlock_restrict_self",
        "landlock works without it once no_new_privs is set",
    ),
    (
        "ns_capable_noaudit",
        "a silent probe: the caller falls back when it is refused",
    ),
    (
        "has_ns_capability_noaudit",
        "a silent probe: the caller falls back when it is refused",
    ),
    (
        "has_capability_noaudit",
        "a silent probe: the caller falls back when it is refused",
    ),
    ("oom_badness", "only adjusts the OOM killer's score"),
];

/// Kernel functions that check silently only when the caller says so, which only observed
/// `opts` can tell: with `CAP_OPT_NOAUDIT` seen, they are probes like those above; without it,
/// real permission checks (attaching with ptrace is one).
const SILENT_WHEN_NOAUDIT_CALL_SITES: &[(&str, &str)] = &[
    (
        "__ptrace_may_access",
        "a PTRACE_MODE_NOAUDIT probe: /proc shows another process's details only with it, and nothing fails without",
    ),
    (
        "ptrace_may_access",
        "a PTRACE_MODE_NOAUDIT probe: /proc shows another process's details only with it, and nothing fails without",
    ),
];

/// System calls in which the kernel checks SYS_ADMIN only through the overcommit heuristic
/// (`__vm_enough_memory`): when a check's call site was not recorded (the tracer's call-site
/// table was full), the system call alone says it was that silent probe. `clone` is not among
/// them: creating namespaces checks SYS_ADMIN for real.
const OVERCOMMIT_ONLY_SYSCALLS: &[&str] =
    &["brk", "mmap", "mremap", "mprotect", "execve", "execveat"];

/// (narrower, broader) capabilities the kernel accepts either of, narrow first.
const OR_CHAINS: &[(Capability, Capability, &str)] = &[
    (Capability::Bpf, Capability::SysAdmin, "bpf_capable()"),
    (
        Capability::Perfmon,
        Capability::SysAdmin,
        "perfmon_capable()",
    ),
    (
        Capability::CheckpointRestore,
        Capability::SysAdmin,
        "checkpoint_restore_ns_capable()",
    ),
    (
        Capability::Syslog,
        Capability::SysAdmin,
        "syslog permission checks",
    ),
];

/// Kernel functions through which DAC_READ_SEARCH is really about file handles, not reads.
const FILE_HANDLE_CALL_SITES: &[&str] = &[
    "do_handle_open",
    "handle_to_path",
    "may_decode_fh",
    "open_by_handle_at",
];

/// Kernel paths where a chmod asks for CAP_FSETID only to decide whether the new mode keeps
/// its setgid bit (`in_group_or_capable`, inlined into these): refused, the kernel clears that
/// bit and the chmod succeeds.
const CHMOD_SETGID_CALL_SITES: &[&str] = &[
    "setattr_prepare",
    "setattr_copy",
    "setattr_copy_mode",
    "in_group_or_capable",
];

/// The system calls that change a file's mode.
const CHMOD_SYSCALLS: &[&str] = &["chmod", "fchmod", "fchmodat", "fchmodat2"];

/// The rules, in the order they are tried. The first that applies decides.
pub const RULES: &[Rule] = &[
    Rule {
        name: "runtime-init",
        class: CheckClass::RuntimeSetup,
        applies: |_, entry| {
            entry.key.has(check_flags::RUNTIME_INIT).then(|| RuleFinding {
                reason: format!(
                    "made by the container runtime ({}) while setting the container up, before the entrypoint ran",
                    entry.first_example().map(|e| e.comm.as_str()).unwrap_or("runc init")
                ),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "runtime-prelude",
        class: CheckClass::RuntimeSetup,
        applies: |context, entry| {
            if entry.key.has(check_flags::RUNTIME_INIT) || entry.call_sites.is_empty() {
                return None;
            }
            let bootstraps: Vec<&Example> = entry
                .call_sites
                .iter()
                .map(|site| became_runtime_bootstrap(context, &site.example))
                .collect::<Option<_>>()?;
            let later = bootstraps.first()?;
            RuleFinding::because(format!(
                "made by process {} before it renamed itself {}: the container runtime preparing its own binary (runc's \
                 bind-mounted or memfd copy of itself), before anything of the container ran",
                later.tgid, later.comm
            ))
        },
    },
    Rule {
        name: "foreign-cred",
        class: CheckClass::ForeignCred,
        applies: |_, entry| {
            entry.key.has(check_flags::FOREIGN_CRED).then(|| RuleFinding {
                reason: format!(
                    "the kernel checked credentials that are not the task's own (via {}): another task's, a file opener's or a mounter's",
                    checking_function(entry).unwrap_or("an unknown path")
                ),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "noaudit-observed",
        class: CheckClass::Advisory,
        applies: |_, entry| {
            // NOAUDIT alone is not enough: the call site must be a caller known to fall back.
            // A NOAUDIT check from any other caller goes on to the rules below.
            if !observed_noaudit(entry) {
                return None;
            }
            let (function, why) = silent_call_site(entry).or_else(|| {
                SILENT_WHEN_NOAUDIT_CALL_SITES
                    .iter()
                    .copied()
                    .find(|(function, _)| stack_has(entry, function))
            })?;
            RuleFinding::because(format!(
                "a silent probe (CAP_OPT_NOAUDIT observed) from {function}: {why}"
            ))
        },
    },
    Rule {
        name: "noaudit-call-site",
        class: CheckClass::Advisory,
        applies: |_, entry| {
            if entry.key.opts_known() {
                // The attach path saw opts: `noaudit-observed` has decided with them.
                return None;
            }
            let (function, why) = silent_call_site(entry)?;
            RuleFinding::because(format!(
                "a silent probe from {function} (opts derived from the call site): {why}"
            ))
        },
    },
    Rule {
        name: "overcommit-syscall-without-stack",
        class: CheckClass::Advisory,
        applies: |_, entry| {
            // Observed opts that are not NOAUDIT rule the heuristic out.
            let applies = entry.call_sites.is_empty()
                && (!entry.key.opts_known() || observed_noaudit(entry))
                && entry.key.cap == Capability::SysAdmin.number()
                && OVERCOMMIT_ONLY_SYSCALLS.contains(&entry.key.syscall().as_str());
            applies.then(|| RuleFinding {
                reason: format!(
                    "no kernel stack was recorded, but in {}() the kernel asks for SYS_ADMIN only in its overcommit heuristic, which reserves a little more memory with it and falls back without",
                    entry.key.syscall()
                ),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "nonroot-denied",
        class: CheckClass::Superseded,
        applies: |_, entry| {
            (entry.key.verdict == EntryVerdict::Denied && entry.key.has(check_flags::NONROOT_EUID)).then(|| RuleFinding {
                reason: format!(
                    "denied to a non-root process (uid {}): cap_add does not give capabilities to it without file capabilities or ambient capabilities",
                    entry.first_example().map(|e| e.uid.to_string()).unwrap_or_else(|| "≠0".into())
                ),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "chmod-setgid-probe",
        class: CheckClass::Advisory,
        applies: |_, entry| {
            let applies = entry.key.cap == Capability::Fsetid.number()
                && CHMOD_SYSCALLS.contains(&entry.key.syscall().as_str())
                && CHMOD_SETGID_CALL_SITES
                    .iter()
                    .any(|function| stack_has(entry, function));
            applies.then(|| RuleFinding {
                reason: format!(
                    "{}() asks for FSETID on every mode change only to decide whether the new mode keeps a setgid bit; refused, the kernel clears that bit and the chmod succeeds",
                    entry.key.syscall()
                ),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "read-search-then-override",
        class: CheckClass::Superseded,
        applies: |context, entry| {
            let is_read_search_denial = entry.key.cap == Capability::DacReadSearch.number()
                && entry.key.verdict == EntryVerdict::Denied;
            if !is_read_search_denial || is_file_handle_check(entry) {
                return None;
            }
            let override_granted = context.entries.iter().any(|other| {
                other.key.cap == Capability::DacOverride.number()
                    && other.key.verdict == EntryVerdict::Granted
                    && other.key.syscall_nr == entry.key.syscall_nr
            });
            override_granted.then(|| RuleFinding {
                reason: "the kernel tried DAC_READ_SEARCH first for a read, then DAC_OVERRIDE, which was granted and suffices; \
                         DAC_READ_SEARCH would also allow open_by_handle_at, the classic container escape, which is why Docker leaves it out"
                    .into(),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "read-search-for-reads",
        class: CheckClass::Required,
        applies: |_, entry| {
            let applies = entry.key.cap == Capability::DacReadSearch.number()
                && entry.key.verdict == EntryVerdict::Granted
                && !is_file_handle_check(entry)
                && stack_has(entry, "generic_permission");
            applies.then(|| RuleFinding {
                reason: "reading files it does not own: DAC_OVERRIDE allows the same reads, while DAC_READ_SEARCH also \
                         allows open_by_handle_at, the classic container escape (which is why Docker leaves it out of its defaults)"
                    .into(),
                recommend_instead: Some(Capability::DacOverride),
            })
        },
    },
    Rule {
        name: "read-search-denied-for-reads",
        class: CheckClass::Missing,
        applies: |_, entry| {
            let applies = entry.key.cap == Capability::DacReadSearch.number()
                && entry.key.verdict == EntryVerdict::Denied
                && !is_file_handle_check(entry)
                && stack_has(entry, "generic_permission");
            applies.then(|| RuleFinding {
                reason: "denied for a read of a file it does not own, and DAC_OVERRIDE, which the kernel tries next, was not granted \
                         either: DAC_OVERRIDE alone allows that read, without DAC_READ_SEARCH's open_by_handle_at"
                    .into(),
                recommend_instead: Some(Capability::DacOverride),
            })
        },
    },
    Rule {
        name: "broad-after-narrow",
        class: CheckClass::Superseded,
        applies: |context, entry| {
            let (narrow, _, chain) = OR_CHAINS
                .iter()
                .find(|(_, broad, _)| entry.key.cap == broad.number())?;
            if entry.key.verdict != EntryVerdict::Granted {
                return None;
            }
            let narrow_denied = context.entries.iter().any(|other| {
                other.key.cap == narrow.number()
                    && other.key.verdict == EntryVerdict::Denied
                    && other.key.syscall_nr == entry.key.syscall_nr
            });
            narrow_denied.then(|| RuleFinding {
                reason: format!(
                    "{chain} accepts {} or {}; the narrower one is recommended instead",
                    narrow.short_name(),
                    Capability::SysAdmin.short_name()
                ),
                recommend_instead: Some(*narrow),
            })
        },
    },
    Rule {
        name: "narrow-then-broad",
        class: CheckClass::Required,
        applies: |context, entry| {
            let (_, broad, chain) = OR_CHAINS
                .iter()
                .find(|(narrow, _, _)| entry.key.cap == narrow.number())?;
            if entry.key.verdict != EntryVerdict::Denied {
                return None;
            }
            let broad_granted = context.entries.iter().any(|other| {
                other.key.cap == broad.number()
                    && other.key.verdict == EntryVerdict::Granted
                    && other.key.syscall_nr == entry.key.syscall_nr
            });
            if !broad_granted {
                return None;
            }
            RuleFinding::because(format!(
                "{chain}: denied here, then {} granted it; {} alone suffices and is much narrower",
                broad.short_name(),
                Capability::from_number(entry.key.cap)
                    .map(|cap| cap.short_name())
                    .unwrap_or("it")
            ))
        },
    },
    Rule {
        name: "denied",
        class: CheckClass::Missing,
        applies: |_, entry| {
            (entry.key.verdict == EntryVerdict::Denied).then(|| RuleFinding {
                reason: format!(
                    "denied {} time(s): the operation ({}() via {}) failed without it{}",
                    entry.count,
                    entry.key.syscall(),
                    checking_function(entry).unwrap_or("the kernel"),
                    unrecognised_noaudit_note(entry)
                ),
                recommend_instead: None,
            })
        },
    },
    Rule {
        name: "granted",
        class: CheckClass::Required,
        applies: |_, entry| {
            RuleFinding::because(format!(
                "{}{}",
                describe_use(entry),
                unrecognised_noaudit_note(entry)
            ))
        },
    },
];

fn observed_noaudit(entry: &ProfileEntry) -> bool {
    entry.key.opts_known() && entry.key.has(check_flags::OPTS_NOAUDIT)
}

/// The known silent caller in the entry's stack, with why it does not need the capability.
fn silent_call_site(entry: &ProfileEntry) -> Option<(&'static str, &'static str)> {
    SILENT_CALL_SITES
        .iter()
        .copied()
        .find(|(function, _)| stack_has(entry, function))
}

/// Said of a need that the kernel asked for silently from a caller capprof does not know to
/// fall back: counted as a need, since a missing capability breaks the service and an extra
/// one is caught by `capprof verify --leave-one-out`.
fn unrecognised_noaudit_note(entry: &ProfileEntry) -> &'static str {
    if observed_noaudit(entry) {
        " (asked with CAP_OPT_NOAUDIT, but not from a caller known to fall back: counted as a need; \
         `capprof verify --leave-one-out` tells)"
    } else {
        ""
    }
}

/// Classifies every entry of a profile.
pub fn classify(profile: &Profile) -> Vec<Classified> {
    let context = Context {
        entries: &profile.entries,
    };
    profile
        .entries
        .iter()
        .map(|entry| classify_entry(&context, entry))
        .collect()
}

/// Classifies one entry in its profile's context.
pub fn classify_entry(context: &Context<'_>, entry: &ProfileEntry) -> Classified {
    for rule in RULES {
        if let Some(finding) = (rule.applies)(context, entry) {
            return Classified {
                entry: entry.clone(),
                class: rule.class,
                rule: rule.name,
                reason: finding.reason,
                recommend_instead: finding.recommend_instead,
            };
        }
    }
    unreachable!("the last rule always applies")
}

/// The runtime bootstrap check (runc before its init stage) that `example`'s process made at the
/// same time or later, if any. runc starts as `exe` (`/proc/self/exe init`) and only renames
/// itself once it runs from its cloned binary; that process never becomes the application (the
/// entrypoint is executed by its grandchild, `runc:[2:INIT]`), so whatever it did before the
/// rename is the runtime's, although the kernel saw no runtime name.
fn became_runtime_bootstrap<'a>(context: &Context<'a>, example: &Example) -> Option<&'a Example> {
    context
        .entries
        .iter()
        .filter(|other| other.key.has(check_flags::RUNTIME_INIT))
        .flat_map(|other| other.call_sites.iter().map(|site| &site.example))
        .find(|runtime| {
            runtime.tgid == example.tgid
                && runtime.seen_at_ms >= example.seen_at_ms
                && runtime_process(&runtime.comm, None) == Some(RuntimeProcess::RuncBootstrap)
        })
}

/// "httpd called bind() → __inet_bind, 12×": what ran, which syscall, which kernel path, how often.
pub fn describe_use(entry: &ProfileEntry) -> String {
    let who = entry
        .first_example()
        .map(|example| example.comm.as_str())
        .unwrap_or("a process");
    let syscall = match entry.key.syscall_nr {
        Some(_) => format!("{}()", entry.key.syscall()),
        None => "(no system call)".to_owned(),
    };
    let path = checking_function(entry)
        .map(|function| format!(" → {function}"))
        .unwrap_or_default();
    format!("{who} called {syscall}{path}, {}×", entry.count)
}

/// The first frame that is not the capability machinery itself, without its offset.
pub fn checking_function(entry: &ProfileEntry) -> Option<&str> {
    let stack = &entry.call_sites.first()?.stack;
    let frames: Vec<&str> = stack.iter().map(String::as_str).collect();
    crate::trace_output::checking_function(&frames)
        .map(|frame| frame.split('+').next().unwrap_or(frame))
}

fn stack_has(entry: &ProfileEntry, function: &str) -> bool {
    entry.call_sites.iter().any(|site| {
        site.stack.iter().any(|frame| {
            let name = frame.split('+').next().unwrap_or(frame);
            name == function
                || name
                    .strip_suffix(".isra.0")
                    .is_some_and(|base| base == function)
        })
    })
}

fn is_file_handle_check(entry: &ProfileEntry) -> bool {
    FILE_HANDLE_CALL_SITES
        .iter()
        .any(|function| stack_has(entry, function))
        || entry.key.syscall().contains("open_by_handle_at")
        || entry.key.syscall().contains("name_to_handle_at")
}

/// Convenience for tests and callers holding only keys.
pub fn entry_key(
    cap: Capability,
    verdict: EntryVerdict,
    syscall_nr: Option<u32>,
    flags: u32,
) -> EntryKey {
    EntryKey {
        cap: cap.number(),
        verdict,
        syscall_nr,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        profile::{Subject, SubjectInfo},
        test_support::check,
    };

    const SYS_SETHOSTNAME: u32 = 170;
    const SYS_OPENAT: u32 = 257;
    const SYS_MMAP: u32 = 9;
    const SYS_BPF: u32 = 321;
    const SYS_BIND: u32 = 49;

    fn classify_one(target: ProfileEntry, others: Vec<ProfileEntry>) -> Classified {
        let mut entries = others;
        entries.push(target.clone());
        let profile = Profile {
            subject: Subject::Host,
            info: SubjectInfo::default(),
            entries,
        };
        classify(&profile)
            .into_iter()
            .find(|c| c.entry == target)
            .unwrap()
    }

    const SETHOSTNAME_STACK: &[&str] = &[
        "cap_capable+0x83",
        "security_capable+0x3b",
        "ns_capable+0x2a",
        "__x64_sys_sethostname+0x73",
    ];
    const MMAP_STACK: &[&str] = &[
        "cap_capable+0x83",
        "security_vm_enough_memory_mm+0x36",
        "__mmap_region+0xe04",
    ];
    const READ_STACK: &[&str] = &[
        "cap_capable",
        "security_capable",
        "capable_wrt_inode_uidgid",
        "generic_permission+0x11a",
        "inode_permission",
    ];

    #[test]
    fn runtime_init_checks_are_runtime_setup() {
        let sethostname = check(
            Capability::SysAdmin,
            EntryVerdict::Granted,
            SYS_SETHOSTNAME,
            SETHOSTNAME_STACK,
        );
        let c = classify_one(
            sethostname
                .flags(check_flags::RUNTIME_INIT)
                .by("runc:[2:INIT]")
                .entry(),
            vec![],
        );
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::RuntimeSetup, "runtime-init")
        );
        assert!(c.reason.contains("runc:[2:INIT]"), "{}", c.reason);
    }

    #[test]
    fn what_runc_did_before_renaming_itself_is_runtime_setup() {
        const SYS_MOUNT: u32 = 165;
        const SYS_CLONE: u32 = 56;
        const MOUNT_STACK: &[&str] = &["cap_capable", "ns_capable", "path_mount+0xda"];
        let mount = check(
            Capability::SysAdmin,
            EntryVerdict::Granted,
            SYS_MOUNT,
            MOUNT_STACK,
        );
        // runc's `exe` stage bind-mounts its own binary, then runs as `runc:[0:PARENT]`.
        let exe_mount = |pid, at_ms| mount.clone().by("exe").pid(pid).seen_at(at_ms).entry();
        let parent = check(
            Capability::SysAdmin,
            EntryVerdict::Granted,
            SYS_CLONE,
            &["cap_capable", "ns_capable", "copy_process"],
        )
        .flags(check_flags::RUNTIME_INIT)
        .by("runc:[0:PARENT]")
        .pid(27713)
        .seen_at(1_000)
        .entry();
        let c = classify_one(exe_mount(27713, 1_000), vec![parent.clone()]);
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::RuntimeSetup, "runtime-prelude")
        );
        assert!(c.reason.contains("runc:[0:PARENT]"), "{}", c.reason);
        // Another process, or the same pid reused after runc was gone: the application's.
        let other = classify_one(exe_mount(27800, 1_000), vec![parent.clone()]);
        assert_eq!((other.class, other.rule), (CheckClass::Required, "granted"));
        let reused = classify_one(exe_mount(27713, 9_000), vec![parent]);
        assert_eq!(
            (reused.class, reused.rule),
            (CheckClass::Required, "granted")
        );
        // runc:[2:INIT] executes the entrypoint in place: its pid's later checks are the app's.
        let init = mount
            .clone()
            .flags(check_flags::RUNTIME_INIT)
            .by("runc:[2:INIT]")
            .pid(27720)
            .seen_at(1_000)
            .entry();
        let app = classify_one(exe_mount(27720, 1_000), vec![init]);
        assert_eq!((app.class, app.rule), (CheckClass::Required, "granted"));
    }

    #[test]
    fn foreign_credentials_are_not_the_containers_needs() {
        let c = classify_one(
            check(
                Capability::DacOverride,
                EntryVerdict::Granted,
                SYS_OPENAT,
                &["cap_capable", "security_capable", "file_ns_capable"],
            )
            .flags(check_flags::FOREIGN_CRED)
            .entry(),
            vec![],
        );
        assert_eq!((c.class, c.rule), (CheckClass::ForeignCred, "foreign-cred"));
    }

    #[test]
    fn observed_noaudit_is_advisory() {
        let flags = check_flags::OPTS_KNOWN | check_flags::OPTS_NOAUDIT;
        let c = classify_one(
            check(
                Capability::SysAdmin,
                EntryVerdict::Granted,
                SYS_MMAP,
                MMAP_STACK,
            )
            .flags(flags)
            .entry(),
            vec![],
        );
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::Advisory, "noaudit-observed")
        );
    }

    #[test]
    fn a_ptrace_mode_probe_is_advisory_only_when_noaudit_is_observed() {
        let stack = &[
            "cap_capable",
            "security_capable",
            "__ptrace_may_access",
            "ptrace_may_access",
            "do_task_stat",
        ];
        let probe = |flags| {
            classify_one(
                check(
                    Capability::SysPtrace,
                    EntryVerdict::Denied,
                    SYS_OPENAT,
                    stack,
                )
                .flags(flags)
                .entry(),
                vec![],
            )
        };
        let silent = probe(check_flags::OPTS_KNOWN | check_flags::OPTS_NOAUDIT);
        assert_eq!(
            (silent.class, silent.rule),
            (CheckClass::Advisory, "noaudit-observed")
        );
        assert!(
            silent.reason.contains("PTRACE_MODE_NOAUDIT"),
            "{}",
            silent.reason
        );
        let audited = probe(check_flags::OPTS_KNOWN);
        assert_eq!(
            (audited.class, audited.rule),
            (CheckClass::Missing, "denied")
        );
        let unknown = probe(0);
        assert_eq!(
            (unknown.class, unknown.rule),
            (CheckClass::Missing, "denied")
        );
    }

    #[test]
    fn observed_noaudit_from_an_unknown_caller_still_counts() {
        let flags = check_flags::OPTS_KNOWN | check_flags::OPTS_NOAUDIT;
        for (verdict, expected) in [
            (EntryVerdict::Granted, (CheckClass::Required, "granted")),
            (EntryVerdict::Denied, (CheckClass::Missing, "denied")),
        ] {
            let c = classify_one(
                check(
                    Capability::SysPtrace,
                    verdict,
                    SYS_OPENAT,
                    &["cap_capable", "security_capable", "some_driver_ioctl"],
                )
                .flags(flags)
                .entry(),
                vec![],
            );
            assert_eq!((c.class, c.rule), expected, "{verdict:?}: {}", c.reason);
            assert!(c.reason.contains("CAP_OPT_NOAUDIT"), "{}", c.reason);
        }
    }

    #[test]
    fn observed_noaudit_without_a_stack_is_the_overcommit_probe_only_in_memory_syscalls() {
        let with_opts = |flags| {
            let mut bare = check(Capability::SysAdmin, EntryVerdict::Denied, SYS_MMAP, &[])
                .flags(flags)
                .entry();
            bare.call_sites.clear();
            bare
        };
        let silent = classify_one(
            with_opts(check_flags::OPTS_KNOWN | check_flags::OPTS_NOAUDIT),
            vec![],
        );
        assert_eq!(
            (silent.class, silent.rule),
            (CheckClass::Advisory, "overcommit-syscall-without-stack")
        );
        let audited = classify_one(with_opts(check_flags::OPTS_KNOWN), vec![]);
        assert_eq!(
            (audited.class, audited.rule),
            (CheckClass::Missing, "denied")
        );
    }

    #[test]
    fn noaudit_call_sites_are_advisory_when_opts_are_unknown() {
        let c = classify_one(
            check(
                Capability::SysAdmin,
                EntryVerdict::Denied,
                SYS_MMAP,
                MMAP_STACK,
            )
            .entry(),
            vec![],
        );
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::Advisory, "noaudit-call-site")
        );
        assert!(
            c.reason.contains("security_vm_enough_memory_mm"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn observed_opts_win_over_the_call_site() {
        // fexit saw opts without NOAUDIT: the call-site rule must not guess otherwise.
        let c = classify_one(
            check(
                Capability::SysAdmin,
                EntryVerdict::Granted,
                SYS_MMAP,
                MMAP_STACK,
            )
            .flags(check_flags::OPTS_KNOWN)
            .entry(),
            vec![],
        );
        assert_eq!(c.class, CheckClass::Required);
    }

    #[test]
    fn overcommit_probes_without_a_recorded_stack_are_advisory_by_syscall() {
        const SYS_EXECVE: u32 = 59;
        const SYS_CLONE: u32 = 56;
        let without_stack = |cap, syscall| {
            let mut bare = check(cap, EntryVerdict::Denied, syscall, &[])
                .by("sh")
                .entry();
            bare.call_sites.clear();
            bare
        };
        let c = classify_one(without_stack(Capability::SysAdmin, SYS_EXECVE), vec![]);
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::Advisory, "overcommit-syscall-without-stack")
        );
        let brk = classify_one(without_stack(Capability::SysAdmin, 12), vec![]);
        assert_eq!(brk.class, CheckClass::Advisory);
        // clone may create namespaces, and other capabilities are other matters.
        let clone = classify_one(without_stack(Capability::SysAdmin, SYS_CLONE), vec![]);
        assert_eq!((clone.class, clone.rule), (CheckClass::Missing, "denied"));
        let raw = classify_one(without_stack(Capability::SysRawio, SYS_MMAP), vec![]);
        assert_eq!(raw.class, CheckClass::Missing);
        // With a stack, the stack decides.
        let mount_in_mmap = classify_one(
            check(
                Capability::SysAdmin,
                EntryVerdict::Granted,
                SYS_MMAP,
                &["cap_capable", "some_driver_mmap"],
            )
            .entry(),
            vec![],
        );
        assert_eq!(mount_in_mmap.class, CheckClass::Required);
    }

    #[test]
    fn denials_of_non_root_processes_are_superseded() {
        let c = classify_one(
            check(
                Capability::NetBindService,
                EntryVerdict::Denied,
                SYS_BIND,
                &["cap_capable", "__inet_bind"],
            )
            .flags(check_flags::NONROOT_EUID)
            .uid(1000)
            .entry(),
            vec![],
        );
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::Superseded, "nonroot-denied")
        );
        assert!(c.reason.contains("uid 1000"), "{}", c.reason);
    }

    /// `cat` opening a file that only DAC_READ_SEARCH or DAC_OVERRIDE lets it read.
    fn read_by_cat(cap: Capability, verdict: EntryVerdict) -> ProfileEntry {
        check(cap, verdict, SYS_OPENAT, READ_STACK)
            .by("cat")
            .entry()
    }

    #[test]
    fn read_search_denied_then_override_granted_keeps_override() {
        let override_granted = read_by_cat(Capability::DacOverride, EntryVerdict::Granted);
        let c = classify_one(
            read_by_cat(Capability::DacReadSearch, EntryVerdict::Denied),
            vec![override_granted.clone()],
        );
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::Superseded, "read-search-then-override")
        );
        let o = classify_one(
            override_granted,
            vec![read_by_cat(Capability::DacReadSearch, EntryVerdict::Denied)],
        );
        assert_eq!(o.class, CheckClass::Required);
    }

    #[test]
    fn read_search_for_reads_recommends_override_instead() {
        let c = classify_one(
            read_by_cat(Capability::DacReadSearch, EntryVerdict::Granted),
            vec![],
        );
        assert_eq!(
            (c.class, c.rule),
            (CheckClass::Required, "read-search-for-reads")
        );
        assert_eq!(c.recommend_instead, Some(Capability::DacOverride));
        assert!(c.reason.contains("open_by_handle_at"), "{}", c.reason);
        let handles = classify_one(
            check(
                Capability::DacReadSearch,
                EntryVerdict::Granted,
                304,
                &["cap_capable", "may_decode_fh", "do_handle_open"],
            )
            .by("escape")
            .entry(),
            vec![],
        );
        assert_eq!(
            (handles.class, handles.rule, handles.recommend_instead),
            (CheckClass::Required, "granted", None)
        );
    }

    #[test]
    fn fsetid_asked_by_chmod_is_only_about_keeping_the_setgid_bit() {
        const SYS_CHMOD: u32 = 90;
        const SYS_WRITE: u32 = 1;
        let chmod = |verdict| {
            classify_one(
                check(
                    Capability::Fsetid,
                    verdict,
                    SYS_CHMOD,
                    &[
                        "cap_capable+0x83",
                        "security_capable+0x3b",
                        "capable_wrt_inode_uidgid+0x4f",
                        "setattr_prepare+0x16a",
                        "notify_change+0x1e0",
                        "chmod_common+0xc6",
                    ],
                )
                .by("chmod")
                .entry(),
                vec![],
            )
        };
        for verdict in [EntryVerdict::Granted, EntryVerdict::Denied] {
            let c = chmod(verdict);
            assert_eq!(
                (c.class, c.rule),
                (CheckClass::Advisory, "chmod-setgid-probe")
            );
            assert!(c.reason.contains("setgid bit"), "{}", c.reason);
        }
        // Keeping a setuid bit across a write is another matter: that stays a need.
        let write = classify_one(
            check(
                Capability::Fsetid,
                EntryVerdict::Granted,
                SYS_WRITE,
                &[
                    "cap_capable",
                    "setattr_should_drop_suidgid",
                    "file_remove_privs",
                ],
            )
            .entry(),
            vec![],
        );
        assert_eq!((write.class, write.rule), (CheckClass::Required, "granted"));
    }

    #[test]
    fn read_search_denied_with_override_denied_recommends_override() {
        let override_denied = read_by_cat(Capability::DacOverride, EntryVerdict::Denied);
        let c = classify_one(
            read_by_cat(Capability::DacReadSearch, EntryVerdict::Denied),
            vec![override_denied],
        );
        assert_eq!(
            (c.class, c.rule, c.recommend_instead),
            (
                CheckClass::Missing,
                "read-search-denied-for-reads",
                Some(Capability::DacOverride)
            )
        );
        assert!(c.reason.contains("open_by_handle_at"), "{}", c.reason);
        let handles = classify_one(
            check(
                Capability::DacReadSearch,
                EntryVerdict::Denied,
                304,
                &["cap_capable", "may_decode_fh", "do_handle_open"],
            )
            .by("escape")
            .entry(),
            vec![],
        );
        assert_eq!(
            (handles.class, handles.rule, handles.recommend_instead),
            (CheckClass::Missing, "denied", None)
        );
    }

    #[test]
    fn sys_admin_after_a_denied_narrow_capability_is_superseded() {
        let bpf_denied = check(
            Capability::Bpf,
            EntryVerdict::Denied,
            SYS_BPF,
            &["cap_capable", "bpf_capable"],
        )
        .by("loader")
        .entry();
        let admin = check(
            Capability::SysAdmin,
            EntryVerdict::Granted,
            SYS_BPF,
            &["cap_capable", "bpf_capable"],
        )
        .by("loader")
        .entry();
        let c = classify_one(admin.clone(), vec![bpf_denied.clone()]);
        assert_eq!(
            (c.class, c.rule, c.recommend_instead),
            (
                CheckClass::Superseded,
                "broad-after-narrow",
                Some(Capability::Bpf)
            )
        );
        let narrow = classify_one(bpf_denied, vec![admin]);
        assert_eq!(
            (narrow.class, narrow.rule),
            (CheckClass::Required, "narrow-then-broad")
        );
    }

    #[test]
    fn other_denials_are_missing() {
        let c = classify_one(
            check(
                Capability::NetBindService,
                EntryVerdict::Denied,
                SYS_BIND,
                &[
                    "cap_capable",
                    "security_capable",
                    "ns_capable",
                    "__inet_bind+0x1ea",
                ],
            )
            .by("httpd")
            .entry(),
            vec![],
        );
        assert_eq!((c.class, c.rule), (CheckClass::Missing, "denied"));
        assert!(
            c.reason.contains("bind()") && c.reason.contains("__inet_bind"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn granted_audited_checks_are_required_with_a_checkable_reason() {
        let c = classify_one(
            check(
                Capability::SysAdmin,
                EntryVerdict::Granted,
                SYS_SETHOSTNAME,
                SETHOSTNAME_STACK,
            )
            .flags(check_flags::OPTS_KNOWN)
            .by("hostname")
            .count(3)
            .entry(),
            vec![],
        );
        assert_eq!((c.class, c.rule), (CheckClass::Required, "granted"));
        assert_eq!(
            c.reason,
            "hostname called sethostname() → __x64_sys_sethostname, 3×"
        );
    }

    #[test]
    fn every_rule_is_exercised_by_a_test_above() {
        let tested = [
            "runtime-init",
            "runtime-prelude",
            "foreign-cred",
            "noaudit-observed",
            "noaudit-call-site",
            "overcommit-syscall-without-stack",
            "nonroot-denied",
            "chmod-setgid-probe",
            "read-search-then-override",
            "read-search-for-reads",
            "read-search-denied-for-reads",
            "broad-after-narrow",
            "narrow-then-broad",
            "denied",
            "granted",
        ];
        let names: Vec<&str> = RULES.iter().map(|rule| rule.name).collect();
        assert_eq!(names, tested);
    }
}
