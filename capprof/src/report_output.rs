//! How `capprof report` prints a recommendation: a table for people, JSON and YAML for
//! programs, and ready-to-paste Compose, Kubernetes and `docker run` snippets.

use std::{collections::BTreeMap, fmt::Write};

use serde::Serialize;

use crate::{
    capability::Capability,
    profile::{Subject, SubjectInfo},
    recommend::{Evidence, IgnoredCheck, Recommendation, format_time},
};

/// The output formats of `capprof report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Sections for people: cap_add with reasons, denied, dangerous, unneeded defaults, ignored.
    Table,
    /// One object: `cap_add` (sorted names without `CAP_`) plus the evidence.
    Json,
    /// The same object as YAML.
    Yaml,
    /// A Compose service fragment with `cap_drop: [ALL]` and `cap_add` (also a valid override file).
    Compose,
    /// A Kubernetes `securityContext.capabilities` block.
    K8s,
    /// `docker run` flags: `--cap-drop ALL --cap-add ...`.
    DockerRun,
}

/// Renders a recommendation.
pub fn render(recommendation: &Recommendation, format: ReportFormat) -> String {
    match format {
        ReportFormat::Table => table(recommendation),
        ReportFormat::Json => {
            let mut json = serde_json::to_string_pretty(&ReportDocument::new(recommendation))
                .expect("reports serialize");
            json.push('\n');
            json
        }
        ReportFormat::Yaml => serde_yaml_ng::to_string(&ReportDocument::new(recommendation))
            .expect("reports serialize"),
        ReportFormat::Compose => compose(recommendation),
        ReportFormat::K8s => kubernetes(recommendation),
        ReportFormat::DockerRun => docker_run(recommendation),
    }
}

/// Who the recommendation is for, in words: `service shop/web`, `container shop-web-1 (3f2a…)`.
pub fn subject_label(subject: &Subject, info: &SubjectInfo) -> String {
    match subject {
        Subject::Container { id } => match info.names.last() {
            Some(name) if !name.is_empty() => {
                format!("container {name} ({})", &id[..id.len().min(12)])
            }
            _ => subject.to_string(),
        },
        _ => subject.to_string(),
    }
}

/// The JSON/YAML document.
#[derive(Debug, Serialize)]
pub struct ReportDocument<'a> {
    pub subject: &'a Subject,
    /// [`subject_label`].
    pub target: String,
    pub cap_drop: [&'static str; 1],
    /// Sorted, Compose spelling (no `CAP_` prefix).
    pub cap_add: Vec<&'static str>,
    /// Each capability of `cap_add` with its reason and evidence.
    pub capabilities: Vec<CapabilityReport<'a>>,
    pub denied: Vec<&'static str>,
    pub dangerous: Vec<DangerReport<'a>>,
    pub unneeded_defaults: Vec<&'static str>,
    /// Checks that do not count, by class.
    pub ignored: BTreeMap<&'static str, &'a [IgnoredCheck]>,
    pub total_checks: u64,
    pub info: &'a SubjectInfo,
}

#[derive(Debug, Serialize)]
pub struct CapabilityReport<'a> {
    pub name: &'static str,
    pub reason: &'a str,
    pub was_denied: bool,
    pub evidence: &'a [Evidence],
}

#[derive(Debug, Serialize)]
pub struct DangerReport<'a> {
    pub name: &'static str,
    pub why: &'a str,
    pub alternative: Option<&'a str>,
}

impl<'a> ReportDocument<'a> {
    pub fn new(recommendation: &'a Recommendation) -> Self {
        let mut cap_add = recommendation.cap_add_names();
        cap_add.sort_unstable();
        Self {
            subject: &recommendation.subject,
            target: subject_label(&recommendation.subject, &recommendation.info),
            cap_drop: ["ALL"],
            cap_add,
            capabilities: recommendation
                .cap_add
                .iter()
                .map(|recommended| CapabilityReport {
                    name: recommended.capability.short_name(),
                    reason: &recommended.reason,
                    was_denied: recommended.was_denied,
                    evidence: &recommended.evidence,
                })
                .collect(),
            denied: short_names(&recommendation.denied),
            dangerous: recommendation
                .cap_add
                .iter()
                .filter_map(|recommended| {
                    let danger = recommended.danger.as_ref()?;
                    Some(DangerReport {
                        name: recommended.capability.short_name(),
                        why: &danger.why,
                        alternative: danger.alternative.as_deref(),
                    })
                })
                .collect(),
            unneeded_defaults: short_names(&recommendation.unneeded_defaults),
            ignored: recommendation
                .ignored
                .iter()
                .map(|(class, checks)| (class.name(), checks.as_slice()))
                .collect(),
            total_checks: recommendation.total_checks,
            info: &recommendation.info,
        }
    }
}

fn short_names(capabilities: &[Capability]) -> Vec<&'static str> {
    capabilities.iter().map(|cap| cap.short_name()).collect()
}

/// One line, safe inside a YAML comment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn verdict_word(verdict: crate::profile::EntryVerdict) -> &'static str {
    match verdict {
        crate::profile::EntryVerdict::Granted => "granted",
        crate::profile::EntryVerdict::Denied => "denied",
    }
}

fn table(recommendation: &Recommendation) -> String {
    let mut out = String::new();
    let label = subject_label(&recommendation.subject, &recommendation.info);
    let _ = writeln!(
        out,
        "{label}: {} capability checks recorded",
        recommendation.total_checks
    );
    if recommendation.total_checks == 0 {
        let _ = writeln!(
            out,
            "\nNothing recorded yet: run its workload (its tests, a typical request mix) while the capprof daemon runs, then ask again."
        );
        return out;
    }
    if recommendation.cap_add.is_empty() {
        let _ = writeln!(
            out,
            "\ncap_add: none. It needs no capability: run it with cap_drop: [ALL] alone."
        );
    } else {
        let _ = writeln!(out, "\ncap_add (with cap_drop: [ALL]):");
        let width = recommendation
            .cap_add
            .iter()
            .map(|recommended| recommended.capability.short_name().len())
            .max()
            .unwrap_or(0);
        for recommended in &recommendation.cap_add {
            let _ = writeln!(
                out,
                "  {:<width$}  {}",
                recommended.capability.short_name(),
                recommended.reason
            );
        }
    }
    if !recommendation.denied.is_empty() {
        let _ = writeln!(
            out,
            "\nDenied while profiling (the operation failed; they are in cap_add so it works):\n  {}",
            short_names(&recommendation.denied).join(", ")
        );
    }
    let dangerous: Vec<_> = recommendation
        .cap_add
        .iter()
        .filter_map(|recommended| Some((recommended.capability, recommended.danger.as_ref()?)))
        .collect();
    if !dangerous.is_empty() {
        let _ = writeln!(out, "\nDangerous (review before granting):");
        for (capability, danger) in dangerous {
            let _ = writeln!(out, "  {}: {}", capability.short_name(), danger.why);
            if let Some(alternative) = &danger.alternative {
                let _ = writeln!(out, "    instead: {alternative}");
            }
        }
    }
    if !recommendation.unneeded_defaults.is_empty() {
        let _ = writeln!(
            out,
            "\nDocker defaults it did not need ({} of {}), dropped by cap_drop: [ALL]:\n  {}",
            recommendation.unneeded_defaults.len(),
            Capability::DOCKER_DEFAULTS.len(),
            short_names(&recommendation.unneeded_defaults).join(", ")
        );
    }
    if !recommendation.ignored.is_empty() {
        let _ = writeln!(out, "\nSeen but not counted:");
        for (class, checks) in &recommendation.ignored {
            let total: u64 = checks.iter().map(|check| check.count).sum();
            let noun = if total == 1 { "check" } else { "checks" };
            let _ = writeln!(out, "  {} ({total} {noun}):", class.name());
            for check in checks {
                let _ = writeln!(
                    out,
                    "    {} {} in {}() by {}, {}×: {}",
                    check.capability,
                    verdict_word(check.verdict),
                    check.syscall,
                    check.comm.as_deref().unwrap_or("?"),
                    check.count,
                    check.reason
                );
            }
        }
    }
    out
}

/// The header comment of the YAML snippets.
fn snippet_header(recommendation: &Recommendation) -> String {
    let label = subject_label(&recommendation.subject, &recommendation.info);
    let mut header = format!(
        "# capprof: minimal capabilities for {label}, from {} capability checks",
        recommendation.total_checks
    );
    let info = &recommendation.info;
    if info.first_seen_ms > 0 {
        let _ = write!(
            header,
            " seen {} to {}",
            format_time(info.first_seen_ms),
            format_time(info.last_seen_ms)
        );
    }
    header.push('\n');
    header
}

/// The capability list items with a comment line (or two) above each.
fn commented_items(recommendation: &Recommendation, indent: &str) -> String {
    let mut out = String::new();
    for recommended in &recommendation.cap_add {
        let _ = writeln!(out, "{indent}# {}", one_line(&recommended.reason));
        if let Some(danger) = &recommended.danger {
            let _ = writeln!(out, "{indent}# DANGEROUS: {}", one_line(&danger.why));
            if let Some(alternative) = &danger.alternative {
                let _ = writeln!(out, "{indent}# instead: {}", one_line(alternative));
            }
        }
        let _ = writeln!(out, "{indent}- {}", recommended.capability.short_name());
    }
    out
}

/// The name the service has in a Compose file, or a good guess for one.
pub fn compose_service_name(recommendation: &Recommendation) -> String {
    let info = &recommendation.info;
    let raw = match &recommendation.subject {
        Subject::Service { service, .. } => service.clone(),
        _ if info.compose_service.is_some() => info.compose_service.clone().unwrap_or_default(),
        Subject::Container { id } => info.names.last().cloned().unwrap_or_else(|| id.clone()),
        Subject::Image { name } => {
            let base = name.rsplit('/').next().unwrap_or(name);
            base.split([':', '@']).next().unwrap_or(base).to_owned()
        }
        Subject::Host => "app".to_owned(),
    };
    // Compose accepts [a-zA-Z0-9._-] in service names.
    let name: String = raw
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                true => c,
                false => '-',
            },
        )
        .collect();
    match name.is_empty() {
        true => "app".to_owned(),
        false => name,
    }
}

fn compose(recommendation: &Recommendation) -> String {
    let service = compose_service_name(recommendation);
    let mut out = snippet_header(recommendation);
    let _ = writeln!(
        out,
        "# Paste under `services:`, or use as an override file:\n#   docker-compose -f docker-compose.yml -f this-file.yml up"
    );
    let _ = writeln!(out, "services:\n  {service}:\n    cap_drop:\n      - ALL");
    if recommendation.cap_add.is_empty() {
        let _ = writeln!(out, "    cap_add: []");
    } else {
        let _ = writeln!(out, "    cap_add:");
        out.push_str(&commented_items(recommendation, "      "));
    }
    out
}

fn kubernetes(recommendation: &Recommendation) -> String {
    let mut out = snippet_header(recommendation);
    let _ = writeln!(out, "# Goes in the container's spec.");
    let _ = writeln!(
        out,
        "securityContext:\n  capabilities:\n    drop:\n      - ALL"
    );
    if recommendation.cap_add.is_empty() {
        let _ = writeln!(out, "    add: []");
    } else {
        let _ = writeln!(out, "    add:");
        out.push_str(&commented_items(recommendation, "      "));
    }
    out
}

fn docker_run(recommendation: &Recommendation) -> String {
    let mut flags = vec!["--cap-drop ALL".to_owned()];
    flags.extend(
        recommendation
            .cap_add
            .iter()
            .map(|recommended| format!("--cap-add {}", recommended.capability.short_name())),
    );
    format!("{}\n", flags.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{CheckEntry, SEEN_AT_MS, check};
    use crate::{
        profile::{EntryVerdict, Profile},
        recommend::recommend,
    };
    use capprof_common::check_flags;

    /// A check granted four times over a second.
    fn granted(cap: Capability, syscall: u32, stack: &[&str]) -> CheckEntry {
        check(cap, EntryVerdict::Granted, syscall, stack)
            .count(4)
            .pid(9)
            .seen(SEEN_AT_MS, SEEN_AT_MS + 1_000)
    }

    fn web() -> Recommendation {
        recommend(&Profile {
            subject: Subject::Service {
                project: "shop".into(),
                service: "web".into(),
            },
            info: SubjectInfo {
                names: vec!["shop-web-1".into()],
                compose_project: Some("shop".into()),
                compose_service: Some("web".into()),
                first_seen_ms: SEEN_AT_MS,
                last_seen_ms: SEEN_AT_MS + 1_000,
                ..Default::default()
            },
            entries: vec![
                granted(
                    Capability::NetBindService,
                    49,
                    &["cap_capable", "ns_capable", "__inet_bind+0x1ea"],
                )
                .by("httpd")
                .entry(),
                granted(
                    Capability::Chown,
                    260,
                    &[
                        "cap_capable",
                        "capable_wrt_inode_uidgid",
                        "setattr_prepare+0x115",
                    ],
                )
                .by("chown")
                .entry(),
                granted(
                    Capability::SysAdmin,
                    170,
                    &["cap_capable", "ns_capable", "__x64_sys_sethostname+0x73"],
                )
                .by("hostname")
                .entry(),
                granted(
                    Capability::SysAdmin,
                    9,
                    &["cap_capable", "security_vm_enough_memory_mm+0x36"],
                )
                .by("httpd")
                .entry(),
                granted(
                    Capability::Setuid,
                    105,
                    &["cap_capable", "ns_capable_setid"],
                )
                .flags(check_flags::RUNTIME_INIT)
                .by("runc:[2:INIT]")
                .entry(),
            ],
        })
    }

    #[test]
    fn table_has_every_section() {
        let table = render(&web(), ReportFormat::Table);
        for expected in [
            "service shop/web: 20 capability checks recorded",
            "cap_add (with cap_drop: [ALL]):",
            "NET_BIND_SERVICE  httpd called bind() → __inet_bind, 4×",
            "Dangerous (review before granting):",
            "instead: set the hostname in the Compose file",
            "Docker defaults it did not need (12 of 14)",
            "Seen but not counted:",
            "advisory (4 checks):",
            "runtime-setup (4 checks):",
        ] {
            assert!(table.contains(expected), "missing `{expected}` in\n{table}");
        }
    }

    #[test]
    fn json_has_sorted_short_names_and_evidence() {
        let json: serde_json::Value =
            serde_json::from_str(&render(&web(), ReportFormat::Json)).unwrap();
        assert_eq!(
            json["cap_add"],
            serde_json::json!(["CHOWN", "NET_BIND_SERVICE", "SYS_ADMIN"])
        );
        assert_eq!(json["cap_drop"], serde_json::json!(["ALL"]));
        assert_eq!(json["capabilities"][1]["evidence"][0]["syscall"], "bind");
        assert_eq!(json["dangerous"][0]["name"], "SYS_ADMIN");
        assert_eq!(
            json["ignored"]["advisory"][0]["capability"],
            "CAP_SYS_ADMIN"
        );
        assert_eq!(json["subject"]["kind"], "service");
    }

    #[test]
    fn yaml_is_the_same_document() {
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&render(&web(), ReportFormat::Yaml)).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&render(&web(), ReportFormat::Json)).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn compose_fragment_parses_with_reasons_as_comments() {
        let text = render(&web(), ReportFormat::Compose);
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            yaml,
            serde_json::json!({"services": {"web": {
                "cap_drop": ["ALL"],
                "cap_add": ["CHOWN", "NET_BIND_SERVICE", "SYS_ADMIN"],
            }}})
        );
        assert!(
            text.contains("      # httpd called bind() → __inet_bind"),
            "{text}"
        );
        assert!(
            text.contains("# DANGEROUS: SYS_ADMIN is a catch-all"),
            "{text}"
        );
    }

    #[test]
    fn kubernetes_block_parses() {
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&render(&web(), ReportFormat::K8s)).unwrap();
        assert_eq!(
            yaml,
            serde_json::json!({"securityContext": {"capabilities": {
                "drop": ["ALL"],
                "add": ["CHOWN", "NET_BIND_SERVICE", "SYS_ADMIN"],
            }}})
        );
    }

    #[test]
    fn docker_run_flags() {
        assert_eq!(
            render(&web(), ReportFormat::DockerRun),
            "--cap-drop ALL --cap-add CHOWN --cap-add NET_BIND_SERVICE --cap-add SYS_ADMIN\n"
        );
    }

    #[test]
    fn empty_profiles_still_render_valid_snippets() {
        let empty = recommend(&Profile {
            subject: Subject::Image {
                name: "registry.local/team/api:1.2".into(),
            },
            info: SubjectInfo::default(),
            entries: vec![],
        });
        let compose: serde_json::Value =
            serde_yaml_ng::from_str(&render(&empty, ReportFormat::Compose)).unwrap();
        assert_eq!(compose["services"]["api"]["cap_add"], serde_json::json!([]));
        let k8s: serde_json::Value =
            serde_yaml_ng::from_str(&render(&empty, ReportFormat::K8s)).unwrap();
        assert_eq!(
            k8s["securityContext"]["capabilities"]["add"],
            serde_json::json!([])
        );
        assert_eq!(render(&empty, ReportFormat::DockerRun), "--cap-drop ALL\n");
        assert!(render(&empty, ReportFormat::Table).contains("Nothing recorded yet"));
    }
}
