//! From a classified profile to the advice a user pastes: the minimal `cap_add`, each with a
//! reason a person can check, and everything else worth knowing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    capability::Capability,
    classify::{self, CheckClass, Classified},
    profile::{EntryVerdict, Profile, ProfileEntry, Subject, SubjectInfo},
};

/// A check behind a recommendation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The capability the kernel checked (may differ from the recommended one).
    pub checked: String,
    pub verdict: EntryVerdict,
    pub class: CheckClass,
    pub rule: String,
    pub syscall: String,
    /// The kernel function that asked.
    pub kernel_path: Option<String>,
    pub count: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The first task seen making the check.
    pub comm: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// Kernel stack of the first call path, innermost first.
    pub stack: Vec<String>,
    pub reason: String,
}

/// Why a capability is risky, and what to do instead where something narrower exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Danger {
    pub why: String,
    pub alternative: Option<String>,
}

/// One capability of the recommended `cap_add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendedCapability {
    pub capability: Capability,
    /// One line a person can check: what ran, which syscall, which kernel path, how often, when.
    pub reason: String,
    /// It was denied while profiling: the service failed without it.
    pub was_denied: bool,
    pub danger: Option<Danger>,
    pub evidence: Vec<Evidence>,
}

/// Checks seen that do not count towards `cap_add`, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredCheck {
    pub capability: String,
    pub verdict: EntryVerdict,
    pub syscall: String,
    pub count: u64,
    pub comm: Option<String>,
    pub reason: String,
}

/// The advice for one subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    pub subject: Subject,
    pub info: SubjectInfo,
    /// The minimal `cap_add`, sorted by name; to be used with `cap_drop: [ALL]`.
    pub cap_add: Vec<RecommendedCapability>,
    /// Docker's default capabilities that were never needed.
    pub unneeded_defaults: Vec<Capability>,
    /// Capabilities that were denied and are needed (also in `cap_add`).
    pub denied: Vec<Capability>,
    /// Recommended capabilities that deserve a second look.
    pub dangerous: Vec<Capability>,
    /// Checks seen that do not count, grouped by class.
    pub ignored: BTreeMap<CheckClass, Vec<IgnoredCheck>>,
    pub total_checks: u64,
}

impl Recommendation {
    /// The `cap_add` names in Compose spelling (`NET_BIND_SERVICE`), sorted.
    pub fn cap_add_names(&self) -> Vec<&'static str> {
        self.cap_add
            .iter()
            .map(|recommended| recommended.capability.short_name())
            .collect()
    }
}

/// Builds the recommendation for a profile.
pub fn recommend(profile: &Profile) -> Recommendation {
    let classified = classify::classify(profile);
    let mut needed: BTreeMap<&'static str, RecommendedCapability> = BTreeMap::new();
    let mut ignored: BTreeMap<CheckClass, Vec<IgnoredCheck>> = BTreeMap::new();
    for item in &classified {
        let Some(checked) = item.entry.key.capability() else {
            continue;
        };
        if !item.class.counts_as_need() {
            ignored.entry(item.class).or_default().push(IgnoredCheck {
                capability: item.entry.key.capability_name(),
                verdict: item.entry.key.verdict,
                syscall: item.entry.key.syscall(),
                count: item.entry.count,
                comm: item
                    .entry
                    .first_example()
                    .map(|example| example.comm.clone()),
                reason: item.reason.clone(),
            });
            continue;
        }
        let capability = item.recommend_instead.unwrap_or(checked);
        let recommended =
            needed
                .entry(capability.short_name())
                .or_insert_with(|| RecommendedCapability {
                    capability,
                    reason: String::new(),
                    was_denied: false,
                    danger: danger(capability, &item.entry),
                    evidence: Vec::new(),
                });
        recommended.was_denied |= item.class == CheckClass::Missing;
        recommended.evidence.push(evidence(item));
    }
    // Substitutes found for superseded broad checks (SYS_ADMIN → BPF) count as needs too.
    for item in classified
        .iter()
        .filter(|item| item.class == CheckClass::Superseded)
    {
        if let Some(narrow) = item.recommend_instead {
            let recommended =
                needed
                    .entry(narrow.short_name())
                    .or_insert_with(|| RecommendedCapability {
                        capability: narrow,
                        reason: String::new(),
                        was_denied: false,
                        danger: danger(narrow, &item.entry),
                        evidence: Vec::new(),
                    });
            recommended.evidence.push(evidence(item));
        }
    }
    let mut cap_add: Vec<RecommendedCapability> = needed.into_values().collect();
    for recommended in &mut cap_add {
        recommended
            .evidence
            .sort_by_key(|evidence| std::cmp::Reverse(evidence.count));
        recommended.reason = one_line_reason(recommended);
    }
    let unneeded_defaults = Capability::DOCKER_DEFAULTS
        .iter()
        .copied()
        .filter(|default| {
            !cap_add
                .iter()
                .any(|recommended| recommended.capability == *default)
        })
        .collect::<Vec<_>>();
    let denied = cap_add
        .iter()
        .filter(|r| r.was_denied)
        .map(|r| r.capability)
        .collect();
    let dangerous = cap_add
        .iter()
        .filter(|r| r.danger.is_some())
        .map(|r| r.capability)
        .collect();
    let mut unneeded_defaults = unneeded_defaults;
    unneeded_defaults.sort_by_key(|cap| cap.short_name());
    Recommendation {
        subject: profile.subject.clone(),
        info: profile.info.clone(),
        cap_add,
        unneeded_defaults,
        denied,
        dangerous,
        ignored,
        total_checks: profile.total_checks(),
    }
}

fn evidence(item: &Classified) -> Evidence {
    let entry = &item.entry;
    let example = entry.first_example();
    Evidence {
        checked: entry.key.capability_name(),
        verdict: entry.key.verdict,
        class: item.class,
        rule: item.rule.to_owned(),
        syscall: entry.key.syscall(),
        kernel_path: classify::checking_function(entry).map(str::to_owned),
        count: entry.count,
        first_seen_ms: entry.first_seen_ms,
        last_seen_ms: entry.last_seen_ms,
        comm: example.map(|e| e.comm.clone()),
        pid: example.map(|e| e.pid),
        uid: example.map(|e| e.uid),
        stack: entry
            .call_sites
            .first()
            .map(|site| site.stack.clone())
            .unwrap_or_default(),
        reason: item.reason.clone(),
    }
}

/// "httpd called bind() → __inet_bind, 12×, first seen 2026-12-03 17:01:02 UTC" plus, when it
/// matters, why this capability rather than the one checked.
fn one_line_reason(recommended: &RecommendedCapability) -> String {
    let Some(main) = recommended.evidence.first() else {
        return String::new();
    };
    let who = main.comm.as_deref().unwrap_or("a process");
    let path = main
        .kernel_path
        .as_deref()
        .map(|p| format!(" → {p}"))
        .unwrap_or_default();
    let total: u64 = recommended.evidence.iter().map(|e| e.count).sum();
    let first = recommended
        .evidence
        .iter()
        .map(|e| e.first_seen_ms)
        .min()
        .unwrap_or(main.first_seen_ms);
    let mut line = format!(
        "{who} called {}(){path}, {total}×, first seen {}",
        main.syscall,
        format_time(first)
    );
    if recommended.was_denied {
        line.push_str("; it was DENIED while profiling, so that operation failed");
    }
    if main.checked != recommended.capability.kernel_name() {
        line.push_str(&format!(
            " (the kernel checked {}: {})",
            main.checked, main.reason
        ));
    }
    line
}

/// UTC `YYYY-MM-DD HH:MM:SS` without a date library.
pub fn format_time(epoch_ms: i64) -> String {
    let seconds = epoch_ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let time = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Why a capability is risky, from a table, with an alternative that depends on what it was used
/// for where one exists.
fn danger(capability: Capability, entry: &ProfileEntry) -> Option<Danger> {
    let syscall = entry.key.syscall();
    let (why, alternative): (&str, Option<String>) = match capability {
        Capability::SysAdmin => (
            "SYS_ADMIN is a catch-all (mount, namespaces, many device and kernel settings) and the usual way out of a container",
            match syscall.as_str() {
                "sethostname" | "setdomainname" => Some(
                    "set the hostname in the Compose file (`hostname:`, or `docker run --hostname`) instead of changing it at run time"
                        .to_owned(),
                ),
                "mount" | "umount2" | "fsopen" | "fsmount" | "move_mount" | "fsconfig" | "open_tree" => {
                    Some("declare the mount in the Compose file (`volumes:` or `tmpfs:`) instead of mounting at run time".to_owned())
                }
                "bpf" => Some("add BPF (Linux 5.8+) instead".to_owned()),
                "perf_event_open" => Some("add PERFMON (Linux 5.8+) instead".to_owned()),
                "syslog" => Some("add SYSLOG instead".to_owned()),
                _ => None,
            },
        ),
        Capability::NetAdmin => (
            "NET_ADMIN reconfigures the container's network: interfaces, addresses, routes, firewall rules",
            Some("configure the network from the Compose file (`networks:`, and `sysctls:` for net.* settings) rather than from inside the container".to_owned()),
        ),
        Capability::SysPtrace => (
            "SYS_PTRACE can read and change the memory of every process in the container and, with a shared PID namespace, beyond",
            Some("keep it to debugging images; production services rarely need it".to_owned()),
        ),
        Capability::SysModule => ("SYS_MODULE loads code into the host kernel: full host compromise", Some("load the module on the host before starting the container".to_owned())),
        Capability::DacReadSearch => (
            "DAC_READ_SEARCH allows open_by_handle_at, the classic container escape (shocker)",
            Some("for reading files, DAC_OVERRIDE is enough".to_owned()),
        ),
        Capability::Bpf => ("BPF loads programs into the kernel", None),
        Capability::SysRawio => ("SYS_RAWIO gives raw access to I/O ports and /dev/mem", None),
        Capability::SysBoot => ("SYS_BOOT can reboot the host", None),
        Capability::SysTime => ("SYS_TIME changes the clock of the whole host", Some("keep time with NTP on the host".to_owned())),
        Capability::MacAdmin | Capability::MacOverride => ("changes or bypasses the host's mandatory access control", None),
        Capability::AuditControl => ("reconfigures the host's audit subsystem", None),
        Capability::Syslog => ("reads and clears the kernel log, which exposes kernel addresses", None),
        Capability::Perfmon => ("PERFMON observes the whole system's performance events", None),
        _ => return None,
    };
    Some(Danger {
        why: why.to_owned(),
        alternative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::check;
    use capprof_common::check_flags;

    fn profile(entries: Vec<ProfileEntry>) -> Profile {
        Profile {
            subject: Subject::Service {
                project: "shop".into(),
                service: "web".into(),
            },
            info: SubjectInfo::default(),
            entries,
        }
    }

    #[test]
    fn web_server_on_port_80_that_chowns() {
        let recommendation = recommend(&profile(vec![
            check(
                Capability::NetBindService,
                EntryVerdict::Granted,
                49,
                &[
                    "cap_capable",
                    "security_capable",
                    "ns_capable",
                    "__inet_bind+0x1ea",
                ],
            )
            .by("httpd")
            .count(2)
            .entry(),
            check(
                Capability::Chown,
                EntryVerdict::Granted,
                260,
                &[
                    "cap_capable",
                    "capable_wrt_inode_uidgid",
                    "setattr_prepare+0x115",
                ],
            )
            .by("chown")
            .entry(),
            check(
                Capability::SysAdmin,
                EntryVerdict::Granted,
                9,
                &["cap_capable", "security_vm_enough_memory_mm+0x36"],
            )
            .by("httpd")
            .entry(),
            check(
                Capability::Setuid,
                EntryVerdict::Granted,
                105,
                &["cap_capable", "ns_capable_setid"],
            )
            .flags(check_flags::RUNTIME_INIT)
            .by("runc:[2:INIT]")
            .entry(),
        ]));
        assert_eq!(
            recommendation.cap_add_names(),
            ["CHOWN", "NET_BIND_SERVICE"]
        );
        let bind = &recommendation.cap_add[1];
        assert_eq!(
            bind.reason,
            "httpd called bind() → __inet_bind, 2×, first seen 2025-12-03 17:01:02 UTC"
        );
        assert!(bind.danger.is_none() && !bind.was_denied);
        assert_eq!(recommendation.ignored[&CheckClass::Advisory].len(), 1);
        assert_eq!(recommendation.ignored[&CheckClass::RuntimeSetup].len(), 1);
        assert!(
            recommendation
                .unneeded_defaults
                .contains(&Capability::Setuid)
        );
        assert!(
            !recommendation
                .unneeded_defaults
                .contains(&Capability::Chown)
        );
        assert_eq!(recommendation.unneeded_defaults.len(), 12);
        assert_eq!(recommendation.total_checks, 5);
    }

    #[test]
    fn hostname_changes_are_flagged_with_the_compose_alternative() {
        let recommendation = recommend(&profile(vec![
            check(
                Capability::SysAdmin,
                EntryVerdict::Granted,
                170,
                &[
                    "cap_capable",
                    "security_capable",
                    "ns_capable",
                    "__x64_sys_sethostname+0x73",
                ],
            )
            .by("hostname")
            .entry(),
        ]));
        assert_eq!(recommendation.cap_add_names(), ["SYS_ADMIN"]);
        assert_eq!(recommendation.dangerous, vec![Capability::SysAdmin]);
        let danger = recommendation.cap_add[0].danger.as_ref().unwrap();
        assert!(
            danger.alternative.as_deref().unwrap().contains("hostname:"),
            "{danger:?}"
        );
    }

    #[test]
    fn reads_recommend_override_and_denials_are_reported() {
        let read = &[
            "cap_capable",
            "capable_wrt_inode_uidgid",
            "generic_permission+0x11a",
        ];
        let recommendation = recommend(&profile(vec![
            check(Capability::DacReadSearch, EntryVerdict::Denied, 257, read)
                .by("cat")
                .entry(),
            check(Capability::DacOverride, EntryVerdict::Granted, 257, read)
                .by("cat")
                .entry(),
            check(
                Capability::NetRaw,
                EntryVerdict::Denied,
                41,
                &["cap_capable", "inet_create"],
            )
            .by("ping")
            .entry(),
        ]));
        assert_eq!(recommendation.cap_add_names(), ["DAC_OVERRIDE", "NET_RAW"]);
        assert_eq!(recommendation.denied, vec![Capability::NetRaw]);
        assert!(
            recommendation.cap_add[1].reason.contains("DENIED"),
            "{}",
            recommendation.cap_add[1].reason
        );
        assert_eq!(
            recommendation.ignored[&CheckClass::Superseded][0].capability,
            "CAP_DAC_READ_SEARCH"
        );
    }

    #[test]
    fn a_read_denied_both_ways_recommends_override_only() {
        let read = &[
            "cap_capable",
            "capable_wrt_inode_uidgid",
            "generic_permission+0x11a",
        ];
        let recommendation = recommend(&profile(vec![
            check(Capability::DacReadSearch, EntryVerdict::Denied, 257, read)
                .by("cat")
                .entry(),
            check(Capability::DacOverride, EntryVerdict::Denied, 257, read)
                .by("cat")
                .entry(),
        ]));
        assert_eq!(recommendation.cap_add_names(), ["DAC_OVERRIDE"]);
        assert_eq!(recommendation.denied, vec![Capability::DacOverride]);
        assert!(recommendation.dangerous.is_empty());
    }

    #[test]
    fn chmod_of_another_users_file_needs_fowner_not_fsetid() {
        let chmod = &[
            "cap_capable",
            "capable_wrt_inode_uidgid",
            "setattr_prepare+0x16a",
        ];
        let recommendation = recommend(&profile(vec![
            check(Capability::Fowner, EntryVerdict::Granted, 90, chmod)
                .by("chmod")
                .entry(),
            check(Capability::Fsetid, EntryVerdict::Granted, 90, chmod)
                .by("chmod")
                .entry(),
        ]));
        assert_eq!(recommendation.cap_add_names(), ["FOWNER"]);
        assert_eq!(recommendation.ignored[&CheckClass::Advisory].len(), 1);
    }

    #[test]
    fn granted_read_search_becomes_override() {
        let recommendation = recommend(&profile(vec![
            check(
                Capability::DacReadSearch,
                EntryVerdict::Granted,
                257,
                &[
                    "cap_capable",
                    "capable_wrt_inode_uidgid",
                    "generic_permission+0x11a",
                ],
            )
            .by("cat")
            .entry(),
        ]));
        assert_eq!(recommendation.cap_add_names(), ["DAC_OVERRIDE"]);
        assert!(
            recommendation.cap_add[0]
                .reason
                .contains("the kernel checked CAP_DAC_READ_SEARCH"),
            "{}",
            recommendation.cap_add[0].reason
        );
    }

    #[test]
    fn sys_admin_fallback_is_replaced_by_the_narrow_capability() {
        let stack = &["cap_capable", "bpf_capable"];
        let recommendation = recommend(&profile(vec![
            check(Capability::Bpf, EntryVerdict::Denied, 321, stack)
                .by("loader")
                .entry(),
            check(Capability::SysAdmin, EntryVerdict::Granted, 321, stack)
                .by("loader")
                .entry(),
        ]));
        assert_eq!(recommendation.cap_add_names(), ["BPF"]);
        assert!(
            !recommendation.cap_add[0].was_denied,
            "BPF was denied but SYS_ADMIN covered it: nothing failed"
        );
    }

    #[test]
    fn empty_profile_recommends_nothing() {
        let recommendation = recommend(&profile(vec![]));
        assert!(recommendation.cap_add.is_empty());
        assert_eq!(recommendation.unneeded_defaults.len(), 14);
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_764_781_262_000), "2025-12-03 17:01:02 UTC");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
