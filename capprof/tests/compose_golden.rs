//! Golden-file tests for `compose apply` and `compose check`.
//!
//! Each directory under `tests/fixtures/compose/` is a case: `case.json` (files in `-f` order,
//! the recommendations, options), the input files, and the expected results next to them:
//! `<file>.expected` (the file after apply), `report.expected` (the apply report),
//! `apply.diff.expected` (the dry-run diff), and, when present, `check.txt.expected` and
//! `check.json.expected` (`compose check` on the input). `CAPPROF_BLESS=1` rewrites the
//! expected files from the current output; review the diff before committing.

#[path = "support/compose_cases.rs"]
mod compose_cases;

use std::fs;

use capprof::compose::{self, ComposeProject};
use compose_cases::{Case, all_cases};
use similar::{ChangeTag, TextDiff};

fn bless() -> bool {
    std::env::var("CAPPROF_BLESS").is_ok_and(|value| value == "1")
}

fn compare(case: &Case, name: &str, actual: &str) {
    let path = case.directory.join(name);
    if bless() {
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; run with CAPPROF_BLESS=1 to create it. Actual:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        let diff = TextDiff::from_lines(&expected, actual)
            .unified_diff()
            .header("expected", "actual")
            .to_string();
        panic!("{} differs from the output:\n{diff}", path.display());
    }
}

/// Every line apply removes belongs to a capability key (the key line, a list item, or a
/// comment inside the list) and every line it adds is one capprof writes: nothing else moved.
fn assert_only_capability_lines_changed(case: &Case, file: &str, before: &str, after: &str) {
    let removed_ok = |line: &str| {
        let trimmed = line.trim();
        ["cap_add:", "cap_drop:", "privileged:", "- ", "#"]
            .iter()
            .any(|prefix| trimmed.starts_with(prefix))
    };
    let added_ok = |line: &str| {
        let trimmed = line.trim();
        trimmed == "cap_drop: [ALL]"
            || trimmed == "cap_add:"
            || trimmed == "cap_add: []"
            || trimmed == "privileged: false"
            || trimmed
                .strip_prefix("- ")
                .and_then(|item| item.split("  # ").next())
                .is_some_and(|name| {
                    let name = name.trim_end();
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                })
    };
    for change in TextDiff::from_lines(before, after).iter_all_changes() {
        let line = change.value();
        match change.tag() {
            ChangeTag::Delete => assert!(
                removed_ok(line),
                "{}/{file}: apply removed a line that is not part of a capability key: {line:?}",
                case.name
            ),
            ChangeTag::Insert => assert!(
                added_ok(line),
                "{}/{file}: apply added an unexpected line: {line:?}",
                case.name
            ),
            ChangeTag::Equal => {}
        }
    }
}

#[test]
fn apply_matches_the_golden_files() {
    let cases = all_cases();
    assert!(cases.len() >= 5, "fixture cases missing: {}", cases.len());
    for case in &cases {
        let project = case.project();
        let plan = compose::plan_apply(&project, &case.recommendations, &case.options())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        for file in &case.files {
            let before = case.input(file);
            let after = plan
                .changes()
                .iter()
                .find(|change| change.path.ends_with(file))
                .map_or(before.clone(), |change| change.updated.clone());
            compare(case, &format!("{file}.expected"), &after);
            assert_only_capability_lines_changed(case, file, &before, &after);
        }
        // Paths relative to the case directory, as a user in that directory would see them.
        let relative = |text: String| text.replace(&format!("{}/", case.directory.display()), "");
        compare(
            case,
            "report.expected",
            &relative(plan.report().to_string()),
        );
        compare(case, "apply.diff.expected", &relative(plan.unified_diff()));

        // Applying to the result changes nothing, and check agrees with apply's report.
        let applied = case.project_of(&plan);
        let again = compose::plan_apply(&applied, &case.recommendations, &case.options()).unwrap();
        assert!(
            again.is_noop(),
            "{}: second apply:\n{}",
            case.name,
            again.unified_diff()
        );
        let report = compose::check(&applied, &case.recommendations).unwrap();
        assert_eq!(
            report.is_clean(),
            plan.report().remaining.is_empty(),
            "{}: check after apply:\n{report}",
            case.name
        );
    }
}

#[test]
fn check_matches_the_golden_files() {
    let mut checked = 0;
    for case in all_cases() {
        if !case.directory.join("check.txt.expected").exists() && !bless() {
            continue;
        }
        if bless() && case.name != "check-extra" {
            continue;
        }
        let report = compose::check(&case.project(), &case.recommendations).unwrap();
        let relative = |text: String| text.replace(&format!("{}/", case.directory.display()), "");
        compare(
            &case,
            "check.txt.expected",
            &relative(format!("{report}\n")),
        );
        compare(
            &case,
            "check.json.expected",
            &relative(format!("{}\n", report.to_json())),
        );
        checked += 1;
    }
    assert!(checked >= 1, "no check fixture");
}

#[test]
fn check_fails_on_a_file_granting_an_extra_capability() {
    let case = all_cases()
        .into_iter()
        .find(|case| case.name == "check-extra")
        .expect("fixture check-extra");
    let report = compose::check(&case.project(), &case.recommendations).unwrap();
    assert!(!report.is_clean());
    let web = report.services.iter().find(|s| s.service == "web").unwrap();
    assert_eq!(web.extra, [capprof::capability::Capability::NetAdmin]);
    assert!(web.drops_all && web.missing.is_empty());
    let db = report.services.iter().find(|s| s.service == "db").unwrap();
    assert!(!db.drops_all && !db.clean);
    assert_eq!(report.not_profiled, ["cache"]);
}

#[test]
fn apply_refuses_malformed_yaml_without_touching_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("compose.yml");
    let text = "services:\n  web:\n    image: x\n    cap_add: [NET_ADMIN\n";
    fs::write(&path, text).unwrap();
    let error = ComposeProject::load(&[&path]).unwrap_err();
    assert!(
        matches!(error, compose::ComposeError::Malformed { line: 5, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("nothing was changed"), "{error}");
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
}
