//! `compose apply`: plan the edits for every profiled service, verify the result, then show a
//! diff or write the files.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Serialize;
use similar::TextDiff;

use super::{
    atomic::{FileSnapshot, write_atomically},
    check::ServiceCheck,
    editor::{ServiceGoal, TextEdit, service_edits, splice},
    error::ComposeError,
    file::ComposeFile,
    project::ComposeProject,
    recommendation::Recommendations,
};

/// What to do with `privileged: true` on a profiled service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PrivilegedPolicy {
    /// Leave it: it also grants devices and disables seccomp/AppArmor, which a capability
    /// profile says nothing about. The report lists the service as still privileged.
    #[default]
    Keep,
    /// Remove it (or write `privileged: false` over an inherited `true`).
    Remove,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Edit only these services (`--service`); empty means every profiled service.
    pub services: Vec<String>,
    pub privileged: PrivilegedPolicy,
}

/// A file `apply` would change: its text before and after.
#[derive(Debug, Clone)]
pub struct FileChange {
    pub path: PathBuf,
    pub original: String,
    pub updated: String,
    snapshot: Option<FileSnapshot>,
}

/// A service `apply` edits, and the files its keys are written to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceUpdate {
    pub service: String,
    pub files: Vec<PathBuf>,
}

/// What `apply` did (or, for a dry run, would do) to each service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Profiled services whose keys were rewritten.
    pub updated: Vec<ServiceUpdate>,
    /// Profiled services whose keys already matched: not touched.
    pub unchanged: Vec<String>,
    /// Services without a profile: left alone.
    pub not_profiled: Vec<String>,
    /// Profiled services left out by `--service`.
    pub not_selected: Vec<String>,
    /// Services not edited whose capabilities change anyway, because they inherit from an
    /// edited one (`extends`, `<<: *anchor`, or an alias of its mapping).
    pub indirectly_changed: Vec<String>,
    /// Profiled services that still do not match after the edit, and why: `privileged` kept,
    /// or a base service (`extends`) that adds capabilities of its own.
    pub remaining: Vec<ServiceCheck>,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for update in &self.updated {
            let files: Vec<String> = update
                .files
                .iter()
                .map(|path| path.display().to_string())
                .collect();
            writeln!(f, "updated    {} ({})", update.service, files.join(", "))?;
        }
        for service in &self.unchanged {
            writeln!(f, "unchanged  {service} (already matches its profile)")?;
        }
        for service in &self.not_profiled {
            writeln!(f, "left alone {service} (never profiled)")?;
        }
        for service in &self.not_selected {
            writeln!(f, "left alone {service} (not selected with --service)")?;
        }
        for service in &self.indirectly_changed {
            writeln!(
                f,
                "note: {service} inherits from an edited service, so its capabilities change too"
            )?;
        }
        for check in &self.remaining {
            writeln!(f, "still not minimal: {}", check.service)?;
            for problem in check.problems() {
                writeln!(f, "    - {problem}")?;
            }
            if !check.extra.is_empty() {
                // The service's own keys are exact after apply, so extras are inherited.
                writeln!(
                    f,
                    "      (inherited from its `extends` base, which capprof does not edit: \
                     profile the base service too, or edit it by hand)"
                )?;
            }
        }
        Ok(())
    }
}

/// The edits `apply` would make, verified: every changed file re-parses, and the report says
/// what each service ends up with.
#[derive(Debug, Clone)]
pub struct ApplyPlan {
    changes: Vec<FileChange>,
    report: ApplyReport,
}

impl ApplyPlan {
    pub fn report(&self) -> &ApplyReport {
        &self.report
    }

    /// The files that change (none when everything already matches).
    pub fn changes(&self) -> &[FileChange] {
        &self.changes
    }

    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }

    /// A unified diff of every change (`--dry-run`); empty when nothing changes.
    pub fn unified_diff(&self) -> String {
        self.changes
            .iter()
            .map(|change| {
                let name = change.path.display().to_string();
                TextDiff::from_lines(&change.original, &change.updated)
                    .unified_diff()
                    .context_radius(3)
                    .header(&name, &name)
                    .to_string()
            })
            .collect()
    }

    /// Writes every changed file atomically. Refuses, writing nothing, when any of them
    /// changed on disk since it was read; returns the paths written.
    pub fn write(&self) -> Result<Vec<PathBuf>, ComposeError> {
        let mut checked = Vec::new();
        for change in &self.changes {
            let snapshot =
                change
                    .snapshot
                    .as_ref()
                    .ok_or_else(|| ComposeError::NotReadFromDisk {
                        path: change.path.clone(),
                    })?;
            if !snapshot.matches_disk(&change.path)? {
                return Err(ComposeError::FileChanged {
                    path: change.path.clone(),
                });
            }
            checked.push((change, snapshot));
        }
        for (change, snapshot) in &checked {
            write_atomically(&change.path, snapshot, change.updated.as_bytes())?;
        }
        Ok(checked
            .iter()
            .map(|(change, _)| change.path.clone())
            .collect())
    }
}

/// Plans `compose apply`: for each selected profiled service, `cap_drop: [ALL]` and its minimal
/// `cap_add` (with reasons), written as described in `docs/compose.md`.
///
/// With several files, a key is rewritten in every file that sets it for the service (Compose
/// unions the lists across files, so a stray entry anywhere would survive), and a missing key
/// is written to the service's home file: the last file that sets any of `cap_add`, `cap_drop`
/// or `privileged` for it, else the first file that defines the service.
pub fn plan_apply(
    project: &ComposeProject,
    recommendations: &Recommendations,
    options: &ApplyOptions,
) -> Result<ApplyPlan, ComposeError> {
    for name in recommendations
        .services()
        .chain(options.services.iter().map(String::as_str))
    {
        if !project.has_service(name) {
            return Err(project.unknown_service(name));
        }
    }
    let selected =
        |name: &str| options.services.is_empty() || options.services.iter().any(|s| s == name);

    let mut report = ApplyReport::default();
    let mut edits: Vec<Vec<TextEdit>> = vec![Vec::new(); project.files.len()];
    let mut edited_services = Vec::new();
    for name in project.service_names() {
        let Some(recommendation) = recommendations.get(&name) else {
            if selected(&name) {
                report.not_profiled.push(name);
            }
            continue;
        };
        if !selected(&name) {
            report.not_selected.push(name);
            continue;
        }
        let needed = recommendation.sorted();
        let home = home_file(project, &name)?;
        let mut files = Vec::new();
        for (index, file) in project.files.iter().enumerate() {
            if file.service_entry(&name).is_none() {
                continue;
            }
            let goal = ServiceGoal {
                needed: &needed,
                is_home: index == home,
                drop_privileged: options.privileged == PrivilegedPolicy::Remove,
            };
            let service_edits = service_edits(file, &name, &goal)?;
            if !service_edits.is_empty() {
                files.push(file.path.clone());
                edits[index].extend(service_edits);
            }
        }
        if files.is_empty() {
            report.unchanged.push(name.clone());
        } else {
            report.updated.push(ServiceUpdate {
                service: name.clone(),
                files,
            });
        }
        edited_services.push(name);
    }

    let mut changes = Vec::new();
    let mut updated_files = Vec::new();
    for (file, edits) in project.files.iter().zip(&edits) {
        if edits.is_empty() {
            updated_files.push(file.clone());
            continue;
        }
        let updated = splice(&file.text, edits).map_err(|overlap| ComposeError::EditFailed {
            path: file.path.clone(),
            message: format!("overlapping edits at byte {}", overlap.0.start),
        })?;
        let reparsed =
            ComposeFile::parse(file.path.clone(), updated.clone(), file.snapshot.clone()).map_err(
                |error| ComposeError::EditFailed {
                    path: file.path.clone(),
                    message: error.to_string(),
                },
            )?;
        updated_files.push(reparsed);
        changes.push(FileChange {
            path: file.path.clone(),
            original: file.text.clone(),
            updated,
            snapshot: file.snapshot.clone(),
        });
    }

    let after = ComposeProject::from_files(updated_files)?;
    for name in project.service_names() {
        if let Some(recommendation) = recommendations.get(&name)
            && edited_services.contains(&name)
        {
            let settings = after.capability_settings(&name)?;
            let check = ServiceCheck::compare(&name, &settings, recommendation);
            if !check.clean {
                report.remaining.push(check);
            }
        } else if let (Ok(before), Ok(now)) = (
            project.capability_settings(&name),
            after.capability_settings(&name),
        ) && before != now
        {
            report.indirectly_changed.push(name);
        }
    }
    Ok(ApplyPlan { changes, report })
}

/// The file that receives a service's missing keys (see [`plan_apply`]).
fn home_file(project: &ComposeProject, service: &str) -> Result<usize, ComposeError> {
    let mut first_definition = None;
    let mut last_setting = None;
    for (index, file) in project.files.iter().enumerate() {
        if file.service_entry(service).is_none() {
            continue;
        }
        first_definition.get_or_insert(index);
        let settings = file.partial_settings(service)?;
        if settings.cap_add.is_some()
            || settings.cap_drop.is_some()
            || settings.privileged.is_some()
        {
            last_setting = Some(index);
        }
    }
    last_setting
        .or(first_definition)
        .ok_or_else(|| project.unknown_service(service))
}

/// Plans `apply` for one Compose text that is not on disk; returns the new text and the report.
pub fn apply_to_text(
    path: &Path,
    text: &str,
    recommendations: &Recommendations,
    options: &ApplyOptions,
) -> Result<(String, ApplyReport), ComposeError> {
    let project = ComposeProject::from_texts([(path.to_path_buf(), text.to_owned())])?;
    let plan = plan_apply(&project, recommendations, options)?;
    let updated = plan
        .changes
        .first()
        .map_or_else(|| text.to_owned(), |change| change.updated.clone());
    Ok((updated, plan.report))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{capability::Capability::*, compose::recommendation::ServiceRecommendation};

    fn recommendations(
        entries: &[(&str, &[(crate::capability::Capability, &str)])],
    ) -> Recommendations {
        entries
            .iter()
            .map(|(name, caps)| {
                (
                    (*name).to_owned(),
                    ServiceRecommendation::new(caps.iter().map(|(c, r)| (*c, (*r).to_owned()))),
                )
            })
            .collect()
    }

    #[test]
    fn reports_updated_unchanged_and_never_profiled_services() {
        let text = "services:\n  web:\n    image: nginx\n  api:\n    image: api\n    cap_drop: [ALL]\n  db:\n    image: postgres\n";
        let recs = recommendations(&[("web", &[(NetBindService, "port 80")]), ("api", &[])]);
        let (out, report) =
            apply_to_text(Path::new("c.yml"), text, &recs, &ApplyOptions::default()).unwrap();
        assert_eq!(
            report.updated,
            [ServiceUpdate {
                service: "web".to_owned(),
                files: vec![PathBuf::from("c.yml")]
            }]
        );
        assert_eq!(report.unchanged, ["api"]);
        assert_eq!(report.not_profiled, ["db"]);
        assert!(report.remaining.is_empty());
        assert!(out.contains("  web:\n    cap_drop: [ALL]\n    cap_add:\n      - NET_BIND_SERVICE  # port 80\n    image: nginx\n"), "{out}");
        let shown = report.to_string();
        assert!(shown.contains("left alone db (never profiled)"), "{shown}");
    }

    #[test]
    fn service_selection_and_unknown_services() {
        let text = "services:\n  web:\n    image: nginx\n  db:\n    image: postgres\n";
        let recs = recommendations(&[("web", &[]), ("db", &[])]);
        let options = ApplyOptions {
            services: vec!["db".to_owned()],
            ..Default::default()
        };
        let (out, report) = apply_to_text(Path::new("c.yml"), text, &recs, &options).unwrap();
        assert_eq!(report.not_selected, ["web"]);
        assert!(
            out.starts_with("services:\n  web:\n    image: nginx\n  db:\n    cap_drop: [ALL]\n")
        );
        let options = ApplyOptions {
            services: vec!["cache".to_owned()],
            ..Default::default()
        };
        let error = apply_to_text(Path::new("c.yml"), text, &recs, &options).unwrap_err();
        assert!(
            matches!(&error, ComposeError::UnknownService { name, available } if name == "cache" && available == &["web", "db"]),
            "{error}"
        );
    }

    #[test]
    fn privileged_kept_is_reported_as_remaining() {
        let text = "services:\n  web:\n    image: x\n    privileged: true\n";
        let recs = recommendations(&[("web", &[(SysAdmin, "mount")])]);
        let (_, report) =
            apply_to_text(Path::new("c.yml"), text, &recs, &ApplyOptions::default()).unwrap();
        assert_eq!(report.remaining.len(), 1);
        assert!(report.remaining[0].privileged);
        let options = ApplyOptions {
            privileged: PrivilegedPolicy::Remove,
            ..Default::default()
        };
        let (out, report) = apply_to_text(Path::new("c.yml"), text, &recs, &options).unwrap();
        assert!(report.remaining.is_empty(), "{report}");
        assert!(!out.contains("privileged"), "{out}");
    }

    #[test]
    fn inheritance_through_extends_and_anchors_is_reported() {
        let text = "services:\n  base: &base\n    image: x\n    cap_add: [NET_ADMIN]\n  child:\n    extends: base\n  merged:\n    <<: *base\n  app:\n    extends: base\n";
        let recs = recommendations(&[("base", &[]), ("app", &[(Kill, "")])]);
        let (out, report) =
            apply_to_text(Path::new("c.yml"), text, &recs, &ApplyOptions::default()).unwrap();
        assert_eq!(report.indirectly_changed, ["child", "merged"]);
        // `app` extends `base`; after base loses NET_ADMIN, app gets exactly KILL.
        assert!(report.remaining.is_empty(), "{report}");
        assert!(
            out.contains(
                "  app:\n    cap_drop: [ALL]\n    cap_add:\n      - KILL\n    extends: base\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_base_that_adds_more_leaves_the_child_not_minimal() {
        let text = "services:\n  base:\n    image: x\n    cap_add: [NET_ADMIN]\n  app:\n    extends: base\n";
        let recs = recommendations(&[("app", &[])]);
        let (_, report) =
            apply_to_text(Path::new("c.yml"), text, &recs, &ApplyOptions::default()).unwrap();
        assert_eq!(report.remaining.len(), 1);
        assert_eq!(report.remaining[0].extra, [NetAdmin]);
    }

    #[test]
    fn several_files_rewrite_every_setter_and_write_missing_keys_to_the_home_file() {
        let project = ComposeProject::from_texts([
            (
                PathBuf::from("a.yml"),
                "services:\n  web:\n    image: x\n    cap_add: [NET_ADMIN]\n  db:\n    image: y\n"
                    .to_owned(),
            ),
            (
                PathBuf::from("b.yml"),
                "services:\n  web:\n    cap_add: [SYS_TIME]\n  db:\n    environment: {A: b}\n"
                    .to_owned(),
            ),
        ])
        .unwrap();
        let recs = recommendations(&[("web", &[(Kill, "")]), ("db", &[])]);
        let plan = plan_apply(&project, &recs, &ApplyOptions::default()).unwrap();
        let changes = plan.changes();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            changes[0].updated,
            "services:\n  web:\n    image: x\n    cap_add:\n      - KILL\n  db:\n    cap_drop: [ALL]\n    image: y\n"
        );
        assert_eq!(
            changes[1].updated,
            "services:\n  web:\n    cap_drop: [ALL]\n    cap_add:\n      - KILL\n  db:\n    environment: {A: b}\n"
        );
        assert!(plan.report().remaining.is_empty(), "{}", plan.report());
        let diff = plan.unified_diff();
        assert!(diff.contains("--- a.yml\n+++ a.yml\n"), "{diff}");
        assert!(diff.contains("-    cap_add: [SYS_TIME]\n"), "{diff}");
    }

    #[test]
    fn writes_atomically_and_refuses_a_file_changed_since_it_was_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("compose.yml");
        let text = "services:\n  web:\n    image: x\n";
        fs::write(&path, text).unwrap();
        let recs = recommendations(&[("web", &[])]);
        let project = ComposeProject::load(&[&path]).unwrap();
        let plan = plan_apply(&project, &recs, &ApplyOptions::default()).unwrap();
        fs::write(&path, format!("{text}# edited meanwhile\n")).unwrap();
        assert!(matches!(
            plan.write(),
            Err(ComposeError::FileChanged { .. })
        ));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{text}# edited meanwhile\n")
        );

        let project = ComposeProject::load(&[&path]).unwrap();
        let plan = plan_apply(&project, &recs, &ApplyOptions::default()).unwrap();
        assert_eq!(plan.write().unwrap(), vec![path.clone()]);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "services:\n  web:\n    cap_drop: [ALL]\n    image: x\n# edited meanwhile\n"
        );
        let again = plan_apply(
            &ComposeProject::load(&[&path]).unwrap(),
            &recs,
            &ApplyOptions::default(),
        )
        .unwrap();
        assert!(again.is_noop());
        assert_eq!(again.unified_diff(), "");
    }

    #[test]
    fn texts_not_from_disk_are_never_written() {
        let project = ComposeProject::from_texts([(
            PathBuf::from("c.yml"),
            "services:\n  web:\n    image: x\n".to_owned(),
        )])
        .unwrap();
        let plan = plan_apply(
            &project,
            &recommendations(&[("web", &[])]),
            &ApplyOptions::default(),
        )
        .unwrap();
        assert!(matches!(
            plan.write(),
            Err(ComposeError::NotReadFromDisk { .. })
        ));
    }
}
