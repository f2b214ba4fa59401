//! How `capprof trace` prints checks: one JSON object per line, or an aligned table, and the
//! per-cgroup summary printed when tracing stops.

use std::collections::BTreeMap;

use capprof_common::Verdict;
use serde::Serialize;

use crate::{
    checks::{CheckRecord, CheckTable, Opts},
    collector::TracerCounters,
};

/// `granted` or `denied`.
pub fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Granted => "granted",
        Verdict::Denied => "denied",
    }
}

/// One line of `capprof trace --format json`.
#[derive(Debug, Serialize)]
pub struct CheckLine<'a> {
    /// Always `check`; summaries say `cgroup_summary`.
    pub kind: &'static str,
    pub cgroup_id: u64,
    /// Thread id of the first task seen making the check, when its event arrived.
    pub pid: Option<u32>,
    pub tgid: Option<u32>,
    pub comm: Option<&'a str>,
    pub uid: Option<u32>,
    pub cap: String,
    pub verdict: &'static str,
    /// Exact number of checks so far.
    pub count: u64,
    /// `sethostname`, or `-` outside a system call.
    pub syscall: String,
    pub syscall_nr: Option<u32>,
    /// Kernel function names of the first call path, innermost first.
    pub stack: Vec<&'a str>,
    /// Distinct kernel call paths seen.
    pub call_sites: usize,
    pub foreign_cred: bool,
    pub nonroot_euid: bool,
    pub opts: Opts,
}

impl<'a> CheckLine<'a> {
    pub fn new(record: &'a CheckRecord) -> Self {
        let first = record.first_sighting();
        let stack = record
            .call_sites
            .first()
            .map(|site| site.stack.iter().map(String::as_str).collect())
            .unwrap_or_default();
        Self {
            kind: "check",
            cgroup_id: record.cgroup_id(),
            pid: first.map(|s| s.pid),
            tgid: first.map(|s| s.tgid),
            comm: first.map(|s| s.comm.as_str()),
            uid: first.map(|s| s.uid),
            cap: record.capability_name(),
            verdict: verdict_name(record.verdict()),
            count: record.count,
            syscall: record.syscall_name(),
            syscall_nr: record.syscall_nr(),
            stack,
            call_sites: record.call_sites.len(),
            foreign_cred: record.foreign_cred(),
            nonroot_euid: record.nonroot_euid(),
            opts: record.opts(),
        }
    }
}

/// Header of the table format.
pub fn table_header() -> String {
    format!(
        "{:>9}  {:<22}  {:<7}  {:<14}  {:<22}  {:>10}  {}",
        "COUNT", "CAPABILITY", "VERDICT", "SYSCALL", "COMM (PID)", "CGROUP", "CHECKED BY"
    )
}

/// One row of the table format.
pub fn table_row(record: &CheckRecord) -> String {
    let line = CheckLine::new(record);
    let who = match (line.comm, line.tgid) {
        (Some(comm), Some(tgid)) => format!("{comm} ({tgid})"),
        _ => "? (event lost)".to_owned(),
    };
    let checked_by = checking_function(&line.stack).unwrap_or("-");
    format!(
        "{:>9}  {:<22}  {:<7}  {:<14}  {:<22}  {:>10}  {}",
        line.count, line.cap, line.verdict, line.syscall, who, line.cgroup_id, checked_by
    )
}

/// The first frame that is not the capability machinery itself: the function that asked.
pub fn checking_function<'a>(stack: &[&'a str]) -> Option<&'a str> {
    const MACHINERY: &[&str] = &[
        "cap_capable",
        "security_capable",
        "ns_capable",
        "ns_capable_noaudit",
        "ns_capable_setid",
        "capable",
        "capable_wrt_inode_uidgid",
        "has_ns_capability",
        "has_ns_capability_noaudit",
        "has_capability",
        "has_capability_noaudit",
        "file_ns_capable",
        "sk_ns_capable",
        "sk_capable",
        "sk_net_capable",
        "netlink_ns_capable",
        "netlink_capable",
        "netlink_net_capable",
        "bpf_trampoline",
    ];
    stack.iter().copied().find(|frame| {
        let name = frame.split('+').next().unwrap_or(frame);
        !MACHINERY.contains(&name) && !name.starts_with("bpf_trampoline")
    })
}

/// Per-capability totals within one cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityTotals {
    pub cap: String,
    pub granted: u64,
    pub denied: u64,
}

/// What one cgroup did while tracing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupSummary {
    pub kind: &'static str,
    pub cgroup_id: u64,
    /// The cgroup's directory, when it still exists.
    pub path: Option<String>,
    pub checks: u64,
    pub capabilities: Vec<CapabilityTotals>,
}

/// Groups the table by cgroup; `path_of` names a cgroup id when it can.
pub fn summarize(
    table: &CheckTable,
    path_of: impl Fn(u64) -> Option<String>,
) -> Vec<CgroupSummary> {
    let mut by_cgroup: BTreeMap<u64, BTreeMap<String, CapabilityTotals>> = BTreeMap::new();
    for record in table.records() {
        let name = record.capability_name();
        let totals = by_cgroup
            .entry(record.cgroup_id())
            .or_default()
            .entry(name.clone())
            .or_insert_with(|| CapabilityTotals {
                cap: name,
                ..Default::default()
            });
        match record.verdict() {
            Verdict::Granted => totals.granted += record.count,
            Verdict::Denied => totals.denied += record.count,
        }
    }
    by_cgroup
        .into_iter()
        .map(|(cgroup_id, caps)| {
            let capabilities: Vec<CapabilityTotals> = caps.into_values().collect();
            CgroupSummary {
                kind: "cgroup_summary",
                cgroup_id,
                path: path_of(cgroup_id),
                checks: capabilities.iter().map(|c| c.granted + c.denied).sum(),
                capabilities,
            }
        })
        .collect()
}

/// The summary as text.
pub fn render_summary(summaries: &[CgroupSummary], counters: TracerCounters) -> String {
    let mut out = String::new();
    if summaries.is_empty() {
        out.push_str("no capability checks seen\n");
    }
    for summary in summaries {
        let path = summary.path.as_deref().unwrap_or("(cgroup removed)");
        out.push_str(&format!(
            "cgroup {} {}: {} checks\n",
            summary.cgroup_id, path, summary.checks
        ));
        for cap in &summary.capabilities {
            out.push_str(&format!(
                "  {:<24} granted {:>9}  denied {:>9}\n",
                cap.cap, cap.granted, cap.denied
            ));
        }
    }
    if counters.events_lost > 0 {
        out.push_str(&format!(
            "note: {} first-sighting events did not fit in the ring buffer (counts are exact; some \
             rows lack pid/stack). Raise --ring-buffer-kib.\n",
            counters.events_lost
        ));
    }
    if counters.checks_dropped > 0 {
        out.push_str(&format!(
            "warning: {} checks were not counted because the aggregate map was full\n",
            counters.checks_dropped
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{CallSite, Sighting};
    use capprof_common::{CheckKey, check_flags};

    fn record(
        cgroup_id: u64,
        cap: u32,
        verdict: Verdict,
        count: u64,
        with_site: bool,
    ) -> CheckRecord {
        let call_sites = if with_site {
            vec![CallSite {
                stack: vec![
                    "cap_capable+0x83".to_owned(),
                    "security_capable".to_owned(),
                    "ns_capable+0x2a".to_owned(),
                    "__x64_sys_sethostname+0x73".to_owned(),
                ]
                .into(),
                sighting: Sighting {
                    pid: 7,
                    tgid: 7,
                    uid: 0,
                    gid: 0,
                    comm: "hostname".into(),
                    boot_time_ns: 1,
                },
            }]
        } else {
            Vec::new()
        };
        CheckRecord {
            key: CheckKey {
                cgroup_id,
                cap,
                verdict: verdict as u32,
                syscall_nr: 170,
                flags: check_flags::OPTS_KNOWN,
            },
            count,
            call_sites,
        }
    }

    #[test]
    fn json_line_has_the_documented_fields() {
        let record = record(9, 21, Verdict::Granted, 3, true);
        let value = serde_json::to_value(CheckLine::new(&record)).unwrap();
        assert_eq!(value["kind"], "check");
        assert_eq!(value["cgroup_id"], 9);
        assert_eq!(value["pid"], 7);
        assert_eq!(value["comm"], "hostname");
        assert_eq!(value["uid"], 0);
        assert_eq!(value["cap"], "CAP_SYS_ADMIN");
        assert_eq!(value["verdict"], "granted");
        assert_eq!(value["count"], 3);
        assert_eq!(value["syscall"], "sethostname");
        assert_eq!(value["stack"][3], "__x64_sys_sethostname+0x73");
        assert_eq!(
            value["opts"],
            serde_json::json!({"observed": {"noaudit": false, "insetid": false}})
        );
    }

    #[test]
    fn rows_name_the_checking_function_and_lost_events() {
        let row = table_row(&record(9, 21, Verdict::Denied, 3, true));
        assert!(
            row.contains("CAP_SYS_ADMIN") && row.contains("denied") && row.contains("hostname (7)"),
            "{row}"
        );
        assert!(row.ends_with("__x64_sys_sethostname+0x73"), "{row}");
        let lost = table_row(&record(9, 0, Verdict::Granted, 1, false));
        assert!(lost.contains("? (event lost)"), "{lost}");
    }

    #[test]
    fn summary_totals_per_cgroup_and_capability() {
        let mut table = CheckTable::default();
        for r in [
            record(1, 21, Verdict::Granted, 5, false),
            record(1, 21, Verdict::Denied, 2, false),
            record(2, 0, Verdict::Granted, 4, false),
        ] {
            table.insert_for_test(r);
        }
        let summaries = summarize(&table, |id| (id == 1).then(|| "/sys/fs/cgroup".to_owned()));
        assert_eq!(summaries.len(), 2);
        assert_eq!(summaries[0].checks, 7);
        assert_eq!(
            summaries[0].capabilities,
            vec![CapabilityTotals {
                cap: "CAP_SYS_ADMIN".into(),
                granted: 5,
                denied: 2
            }]
        );
        assert_eq!(summaries[1].path, None);
        let text = render_summary(
            &summaries,
            TracerCounters {
                events_lost: 2,
                ..Default::default()
            },
        );
        assert!(text.contains("cgroup 1 /sys/fs/cgroup: 7 checks"), "{text}");
        assert!(
            text.contains("(cgroup removed)") && text.contains("2 first-sighting events"),
            "{text}"
        );
    }
}
