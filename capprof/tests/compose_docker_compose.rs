//! Real Compose accepts what `compose apply` writes, and resolves it the way capprof does.
//!
//! Runs Debian's `docker-compose` (Compose v1.29) `config`, which validates and resolves the
//! files (override files merged, `extends` and `<<:` applied) without a Docker engine. For each
//! fixture case, on the input and on the applied output: Compose must accept the files, and
//! the `cap_add`/`cap_drop`/`privileged` Compose resolves for every service must equal what
//! capprof resolves from the same files.

#[path = "support/compose_cases.rs"]
mod compose_cases;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use capprof::compose::{self, ComposeProject};
use compose_cases::{Case, all_cases};

const DOCKER_COMPOSE: &str = "/usr/bin/docker-compose";

/// Outside CI a missing tool skips the test with a reason; in CI it fails it.
fn docker_compose_available() -> bool {
    if Path::new(DOCKER_COMPOSE).exists() {
        return true;
    }
    let reason = format!("{DOCKER_COMPOSE} is missing (apt-get install docker-compose)");
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("CI=true, and this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Writes the files into `directory` under their case names and asks Compose to resolve them.
fn compose_config(case: &Case, directory: &Path, texts: &[(String, String)]) -> String {
    let mut command = Command::new(DOCKER_COMPOSE);
    command
        .current_dir(directory)
        .env("COMPOSE_PROJECT_NAME", "capprof-test");
    for (name, text) in texts {
        fs::write(directory.join(name), text).unwrap();
        command.arg("-f").arg(name);
    }
    let output = command.arg("config").output().unwrap();
    assert!(
        output.status.success(),
        "{}: docker-compose config refused the files: {}\n{}",
        case.name,
        String::from_utf8_lossy(&output.stderr),
        texts
            .iter()
            .map(|(name, text)| format!("--- {name}\n{text}"))
            .collect::<String>()
    );
    String::from_utf8(output.stdout).unwrap()
}

fn assert_same_resolution(
    case: &Case,
    stage: &str,
    ours: &ComposeProject,
    resolved_by_compose: &str,
) {
    let compose =
        ComposeProject::from_texts([(PathBuf::from("config.yml"), resolved_by_compose.to_owned())])
            .unwrap_or_else(|error| panic!("{}: cannot read Compose's output: {error}", case.name));
    let mut theirs_names = compose.service_names();
    let mut our_names = ours.service_names();
    theirs_names.sort();
    our_names.sort();
    assert_eq!(our_names, theirs_names, "{} ({stage})", case.name);
    for service in our_names {
        assert_eq!(
            ours.capability_settings(&service).unwrap(),
            compose.capability_settings(&service).unwrap(),
            "{} ({stage}): service {service} resolves differently in capprof and Compose",
            case.name
        );
    }
}

#[test]
fn docker_compose_accepts_applied_files_and_agrees_on_capabilities() {
    if !docker_compose_available() {
        return;
    }
    let cases = all_cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let directory = tempfile::tempdir().unwrap();
        let inputs: Vec<(String, String)> = case
            .files
            .iter()
            .map(|file| (file.clone(), case.input(file)))
            .collect();
        let resolved = compose_config(case, directory.path(), &inputs);
        assert_same_resolution(case, "input", &case.project(), &resolved);

        let plan =
            compose::plan_apply(&case.project(), &case.recommendations, &case.options()).unwrap();
        let applied = case.project_of(&plan);
        let outputs: Vec<(String, String)> = case
            .files
            .iter()
            .map(|file| {
                let path = case.directory.join(file);
                let text = plan
                    .changes()
                    .iter()
                    .find(|change| change.path == path)
                    .map_or_else(|| case.input(file), |change| change.updated.clone());
                (file.clone(), text)
            })
            .collect();
        let resolved = compose_config(case, directory.path(), &outputs);
        assert_same_resolution(case, "applied", &applied, &resolved);
    }
}
