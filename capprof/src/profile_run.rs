//! One profiling run (`capprof profile -- COMMAND`): which containers ran while the command
//! did, how far it got (for the progress line), and which Compose services to report.
//!
//! The daemon keeps every container it ever saw. A container belongs to the run when it is new
//! since the run started, or when it made checks during the run (a container `docker-compose
//! up` reuses, or a database the tests talk to).

use std::collections::HashMap;

use capprof_proto::v1 as pb;

use crate::compose_files::{NameOrigin, ProjectName};

/// The containers the daemon knew when the run started, with their check counts then.
#[derive(Clone, Debug, Default)]
pub struct RunBaseline {
    checks_before: HashMap<String, u64>,
}

impl RunBaseline {
    pub fn new(known: &[pb::Container]) -> Self {
        Self {
            checks_before: known
                .iter()
                .map(|container| (container.id.clone(), container.total_checks))
                .collect(),
        }
    }

    /// What the run has seen so far, from the daemon's container list now.
    pub fn snapshot(&self, known: &[pb::Container]) -> RunSnapshot {
        let mut containers: Vec<SeenContainer> = known
            .iter()
            .filter_map(|container| {
                let before = self.checks_before.get(&container.id).copied();
                let checks =
                    container.total_checks - before.unwrap_or(0).min(container.total_checks);
                (before.is_none() || checks > 0).then(|| SeenContainer {
                    id: container.id.clone(),
                    name: container.name.clone(),
                    project: container.compose_project.clone(),
                    service: container.compose_service.clone(),
                    running: container.running,
                    first_seen_ms: container.first_seen_ms,
                    checks,
                })
            })
            .collect();
        // First seen first; containers without a check yet (first_seen 0) last, by name.
        containers.sort_by(|a, b| {
            let key = |c: &SeenContainer| (c.first_seen_ms == 0, c.first_seen_ms, c.name.clone());
            key(a).cmp(&key(b))
        });
        RunSnapshot { containers }
    }
}

/// A container that ran during the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenContainer {
    pub id: String,
    pub name: String,
    pub project: Option<String>,
    pub service: Option<String>,
    pub running: bool,
    pub first_seen_ms: i64,
    /// Checks it made during the run.
    pub checks: u64,
}

/// The containers of the run so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSnapshot {
    pub containers: Vec<SeenContainer>,
}

impl RunSnapshot {
    /// Checks counted during the run, over all its containers.
    pub fn checks(&self) -> u64 {
        self.containers
            .iter()
            .map(|container| container.checks)
            .sum()
    }

    /// The Compose projects of the run's containers, in order of first appearance.
    pub fn projects(&self) -> Vec<String> {
        let mut projects: Vec<String> = Vec::new();
        for project in self.containers.iter().filter_map(|c| c.project.as_ref()) {
            if !projects.contains(project) {
                projects.push(project.clone());
            }
        }
        projects
    }

    /// The services of `project` that ran, in order of first appearance.
    pub fn services_of(&self, project: &str) -> Vec<String> {
        let mut services: Vec<String> = Vec::new();
        for container in &self.containers {
            if container.project.as_deref() != Some(project) {
                continue;
            }
            if let Some(service) = &container.service
                && !services.contains(service)
            {
                services.push(service.clone());
            }
        }
        services
    }

    /// One line for the progress display: `12s  2 containers (web, client)  1234 checks`.
    pub fn progress_line(&self, elapsed_secs: u64) -> String {
        let count = self.containers.len();
        let mut names: Vec<&str> = Vec::new();
        for container in &self.containers {
            let name = container.service.as_deref().unwrap_or(&container.name);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let mut listed = String::new();
        for name in &names {
            // Long lists are cut: the line must fit a terminal.
            if listed.len() + name.len() > 40 {
                listed.push_str(", ...");
                break;
            }
            if !listed.is_empty() {
                listed.push_str(", ");
            }
            listed.push_str(name);
        }
        format!(
            "capprof: {}  {count} container{}{}  {} check{}",
            elapsed(elapsed_secs),
            if count == 1 { "" } else { "s" },
            if listed.is_empty() {
                String::new()
            } else {
                format!(" ({listed})")
            },
            self.checks(),
            if self.checks() == 1 { "" } else { "s" },
        )
    }
}

fn elapsed(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

/// Which projects a run reports: the one named with `--project`; else the Compose file's
/// project when containers of it ran (other projects on the host may have run meanwhile: the
/// tracer sees every container); else the projects the run's containers carry in their labels
/// (the command named its project in a way capprof did not see, like `-p`); else the file's
/// project, which then had no container in this run.
pub fn projects_to_report(
    explicit: Option<&ProjectName>,
    from_file: Option<&ProjectName>,
    snapshot: &RunSnapshot,
) -> Vec<ProjectName> {
    if let Some(explicit) = explicit {
        return vec![explicit.clone()];
    }
    let seen = snapshot.projects();
    match from_file {
        Some(file) if seen.is_empty() || seen.contains(&file.name) => vec![file.clone()],
        _ => seen
            .into_iter()
            .map(|name| ProjectName {
                name,
                origin: NameOrigin::Labels,
            })
            .collect(),
    }
}

/// The services to report for `project`: the Compose file's services in file order (when the
/// file belongs to this project), then any other service of the project that ran.
pub fn services_to_report(
    project: &str,
    file_services: Option<&[String]>,
    snapshot: &RunSnapshot,
) -> Vec<String> {
    let mut services: Vec<String> = file_services.map(<[String]>::to_vec).unwrap_or_default();
    for service in snapshot.services_of(project) {
        if !services.contains(&service) {
            services.push(service);
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, service: &str, checks: u64, first_seen_ms: i64) -> pb::Container {
        pb::Container {
            id: id.into(),
            name: format!("webapp_{service}_1"),
            image: "busybox".into(),
            compose_project: Some("webapp".into()),
            compose_service: Some(service.into()),
            running: true,
            first_seen_ms,
            last_seen_ms: first_seen_ms,
            exited_at_ms: None,
            total_checks: checks,
            cap_add: vec![],
        }
    }

    #[test]
    fn new_containers_and_ones_with_new_checks_belong_to_the_run() {
        let old_idle = container("a", "db", 10, 1);
        let old_busy = container("b", "cache", 5, 2);
        let baseline = RunBaseline::new(&[old_idle.clone(), old_busy.clone()]);
        let mut busy_now = old_busy;
        busy_now.total_checks = 8;
        let web = container("c", "web", 40, 5);
        let client = container("d", "client", 0, 0);
        let snapshot = baseline.snapshot(&[old_idle, busy_now, client, web]);
        let names: Vec<&str> = snapshot
            .containers
            .iter()
            .map(|c| c.service.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["cache", "web", "client"]);
        assert_eq!(snapshot.checks(), 3 + 40);
        assert_eq!(snapshot.projects(), ["webapp"]);
        assert_eq!(
            snapshot.progress_line(75),
            "capprof: 1m15s  3 containers (cache, web, client)  43 checks"
        );
    }

    #[test]
    fn labels_name_the_project_unless_one_is_given() {
        let snapshot = RunBaseline::default().snapshot(&[container("c", "web", 1, 1)]);
        let file = ProjectName {
            name: "demo".into(),
            origin: NameOrigin::Directory("/x/demo".into()),
        };
        let reported = projects_to_report(None, Some(&file), &snapshot);
        assert_eq!(
            reported,
            [ProjectName {
                name: "webapp".into(),
                origin: NameOrigin::Labels
            }]
        );
        let mut other = container("e", "db", 1, 2);
        other.compose_project = Some("demo".into());
        let both = RunBaseline::default().snapshot(&[container("c", "web", 1, 1), other]);
        assert_eq!(
            projects_to_report(None, Some(&file), &both),
            std::slice::from_ref(&file),
            "another project that ran meanwhile is not reported"
        );
        assert_eq!(projects_to_report(None, None, &both).len(), 2);
        let flag = ProjectName {
            name: "other".into(),
            origin: NameOrigin::Flag,
        };
        assert_eq!(
            projects_to_report(Some(&flag), Some(&file), &snapshot),
            [flag]
        );
        assert_eq!(
            projects_to_report(None, Some(&file), &RunSnapshot::default()),
            [file]
        );
    }

    #[test]
    fn file_services_come_first_then_the_others_that_ran() {
        let snapshot = RunBaseline::default()
            .snapshot(&[container("c", "web", 1, 1), container("d", "migrate", 1, 2)]);
        let file = ["client".to_owned(), "web".to_owned()];
        assert_eq!(
            services_to_report("webapp", Some(&file), &snapshot),
            ["client", "web", "migrate"]
        );
        assert_eq!(
            services_to_report("webapp", None, &snapshot),
            ["web", "migrate"]
        );
    }
}
