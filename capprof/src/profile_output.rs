//! What `capprof profile` prints when the command is done: per Compose service the minimal
//! `cap_add` with reasons, in the formats of `capprof report`, for a whole project at once.

use std::fmt::Write;

use serde::Serialize;

use crate::{
    recommend::Recommendation,
    report_output::{self, ReportDocument, ReportFormat},
    service_profiles::ProjectProfiles,
};

/// Renders the profiles of the projects a run touched.
pub fn render(projects: &[ProjectProfiles], format: ReportFormat) -> String {
    match format {
        ReportFormat::Table => table(projects),
        ReportFormat::Json => {
            let mut json =
                serde_json::to_string_pretty(&documents(projects)).expect("reports serialize");
            json.push('\n');
            json
        }
        ReportFormat::Yaml => {
            serde_yaml_ng::to_string(&documents(projects)).expect("reports serialize")
        }
        ReportFormat::Compose => compose(projects),
        ReportFormat::K8s => per_service(projects, |out, project, service, recommendation| {
            let _ = writeln!(out, "---\n# {project}/{service}");
            out.push_str(&report_output::render(recommendation, ReportFormat::K8s));
        }),
        ReportFormat::DockerRun => {
            per_service(projects, |out, project, service, recommendation| {
                let _ = write!(
                    out,
                    "{project}/{service}: {}",
                    report_output::render(recommendation, ReportFormat::DockerRun)
                );
            })
        }
    }
}

fn per_service(
    projects: &[ProjectProfiles],
    mut each: impl FnMut(&mut String, &str, &str, &Recommendation),
) -> String {
    let mut out = String::new();
    for project in projects {
        for (service, recommendation) in &project.profiled {
            each(&mut out, &project.project, service, recommendation);
        }
    }
    out
}

/// `capprof report`'s table for each service, with the checks that do not count summed up in
/// one line (`capprof report project/service` lists them).
fn table(projects: &[ProjectProfiles]) -> String {
    let mut out = String::new();
    for project in projects {
        for (service, recommendation) in &project.profiled {
            let brief = Recommendation {
                ignored: Default::default(),
                ..recommendation.clone()
            };
            out.push_str(&report_output::render(&brief, ReportFormat::Table));
            if !recommendation.ignored.is_empty() {
                let counts: Vec<String> = recommendation
                    .ignored
                    .iter()
                    .map(|(class, checks)| {
                        let total: u64 = checks.iter().map(|check| check.count).sum();
                        format!("{total} {}", class.name())
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "\nSeen but not counted: {} (`capprof report {}/{service}` lists them)",
                    counts.join(", "),
                    project.project
                );
            }
            out.push('\n');
        }
        if !project.not_profiled.is_empty() {
            let _ = writeln!(
                out,
                "Not profiled in project {} (no capability check recorded; did they run?): {}\n",
                project.project,
                project.not_profiled.join(", ")
            );
        }
    }
    if projects.iter().all(|project| project.profiled.is_empty()) {
        let _ = writeln!(
            out,
            "No Compose service was profiled: no container with Compose labels made a capability check during the command."
        );
    }
    out
}

#[derive(Serialize)]
struct ProjectDocument<'a> {
    project: &'a str,
    services: Vec<ServiceDocument<'a>>,
    not_profiled: &'a [String],
}

#[derive(Serialize)]
struct ServiceDocument<'a> {
    service: &'a str,
    #[serde(flatten)]
    report: ReportDocument<'a>,
}

fn documents(projects: &[ProjectProfiles]) -> Vec<ProjectDocument<'_>> {
    projects
        .iter()
        .map(|project| ProjectDocument {
            project: &project.project,
            services: project
                .profiled
                .iter()
                .map(|(service, recommendation)| ServiceDocument {
                    service,
                    report: ReportDocument::new(recommendation),
                })
                .collect(),
            not_profiled: &project.not_profiled,
        })
        .collect()
}

/// One Compose override file per project, with every profiled service of the run (several
/// projects are separate YAML documents).
fn compose(projects: &[ProjectProfiles]) -> String {
    let mut out = String::from(
        "# capprof: minimal capabilities per service, with cap_drop: [ALL].\n\
         # Write them into the Compose file with `capprof compose apply FILE`, or use this as an\n\
         # override file: docker-compose -f docker-compose.yml -f this-file.yml up\n",
    );
    for (index, project) in projects.iter().enumerate() {
        if index > 0 {
            out.push_str("---\n");
        }
        let _ = writeln!(out, "# project {}", project.project);
        if !project.not_profiled.is_empty() {
            let _ = writeln!(out, "# not profiled: {}", project.not_profiled.join(", "));
        }
        if project.profiled.is_empty() {
            out.push_str("services: {}\n");
            continue;
        }
        out.push_str("services:\n");
        for (service, recommendation) in &project.profiled {
            let _ = writeln!(
                out,
                "  {service}:\n    # {} capability checks recorded\n    cap_drop:\n      - ALL",
                recommendation.total_checks
            );
            if recommendation.cap_add.is_empty() {
                let _ = writeln!(out, "    cap_add: []");
                continue;
            }
            let _ = writeln!(out, "    cap_add:");
            for needed in &recommendation.cap_add {
                let _ = writeln!(out, "      # {}", one_line(&needed.reason));
                if let Some(danger) = &needed.danger {
                    let _ = writeln!(out, "      # DANGEROUS: {}", one_line(&danger.why));
                }
                let _ = writeln!(out, "      - {}", needed.capability.short_name());
            }
        }
    }
    if projects.is_empty() {
        out.push_str("services: {}\n");
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::check;
    use crate::{
        capability::Capability,
        profile::{EntryVerdict, Profile, ProfileEntry, Subject, SubjectInfo},
        recommend::recommend,
    };

    fn service(name: &str, entries: Vec<ProfileEntry>) -> (String, Recommendation) {
        (
            name.to_owned(),
            recommend(&Profile {
                subject: Subject::Service {
                    project: "webapp".into(),
                    service: name.into(),
                },
                info: SubjectInfo::default(),
                entries,
            }),
        )
    }

    fn bind80() -> ProfileEntry {
        check(
            Capability::NetBindService,
            EntryVerdict::Granted,
            49,
            &["cap_capable", "__inet_bind+0x1ea"],
        )
        .by("httpd")
        .entry()
    }

    fn mmap_probe() -> ProfileEntry {
        check(
            Capability::SysAdmin,
            EntryVerdict::Granted,
            9,
            &["cap_capable", "security_vm_enough_memory_mm+0x36"],
        )
        .by("wget")
        .pid(2)
        .count(5)
        .entry()
    }

    fn webapp() -> Vec<ProjectProfiles> {
        vec![ProjectProfiles {
            project: "webapp".into(),
            profiled: vec![
                service("web", vec![bind80()]),
                service("client", vec![mmap_probe()]),
            ],
            not_profiled: vec!["docs".into()],
        }]
    }

    #[test]
    fn the_compose_fragment_covers_every_service_and_parses() {
        let text = render(&webapp(), ReportFormat::Compose);
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            yaml,
            serde_json::json!({"services": {
                "web": {"cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE"]},
                "client": {"cap_drop": ["ALL"], "cap_add": []},
            }})
        );
        assert!(text.contains("# not profiled: docs"), "{text}");
    }

    #[test]
    fn the_table_has_a_section_per_service_and_names_the_unprofiled() {
        let text = render(&webapp(), ReportFormat::Table);
        assert!(
            text.contains("service webapp/web: 1 capability checks recorded"),
            "{text}"
        );
        assert!(
            text.contains("NET_BIND_SERVICE  httpd called bind()"),
            "{text}"
        );
        assert!(
            text.contains(
                "Seen but not counted: 5 advisory (`capprof report webapp/client` lists them)"
            ),
            "{text}"
        );
        assert!(!text.contains("overcommit"), "{text}");
        assert!(text.contains("cap_add: none"), "{text}");
        assert!(
            text.contains(
                "Not profiled in project webapp (no capability check recorded; did they run?): docs"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_is_one_document_per_project() {
        let json: serde_json::Value =
            serde_json::from_str(&render(&webapp(), ReportFormat::Json)).unwrap();
        assert_eq!(json[0]["project"], "webapp");
        assert_eq!(json[0]["services"][0]["service"], "web");
        assert_eq!(
            json[0]["services"][0]["cap_add"],
            serde_json::json!(["NET_BIND_SERVICE"])
        );
        assert_eq!(json[0]["services"][1]["cap_add"], serde_json::json!([]));
        assert_eq!(json[0]["not_profiled"], serde_json::json!(["docs"]));
    }

    #[test]
    fn nothing_profiled_still_renders_valid_output() {
        let empty = vec![ProjectProfiles {
            project: "webapp".into(),
            profiled: vec![],
            not_profiled: vec!["web".into()],
        }];
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&render(&empty, ReportFormat::Compose)).unwrap();
        assert_eq!(yaml, serde_json::json!({"services": {}}));
        assert!(render(&empty, ReportFormat::Table).contains("No Compose service was profiled"));
    }
}
