//! Loads the Compose fixture cases under `tests/fixtures/compose/`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use capprof::compose::{
    ApplyOptions, ApplyPlan, ComposeProject, PrivilegedPolicy, Recommendations,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct CaseFile {
    files: Vec<String>,
    recommendations: Recommendations,
    #[serde(default)]
    privileged: Option<String>,
    #[serde(default)]
    services: Vec<String>,
}

#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub directory: PathBuf,
    /// Input file names in `-f` order.
    pub files: Vec<String>,
    pub recommendations: Recommendations,
    privileged: PrivilegedPolicy,
    services: Vec<String>,
}

impl Case {
    pub fn options(&self) -> ApplyOptions {
        ApplyOptions {
            services: self.services.clone(),
            privileged: self.privileged,
        }
    }

    pub fn input(&self, file: &str) -> String {
        fs::read_to_string(self.directory.join(file)).unwrap()
    }

    /// The input files, read the way the CLI reads them.
    pub fn project(&self) -> ComposeProject {
        let paths: Vec<PathBuf> = self.files.iter().map(|f| self.directory.join(f)).collect();
        ComposeProject::load(&paths).unwrap_or_else(|error| panic!("{}: {error}", self.name))
    }

    /// The files as `plan` would leave them, under their original paths.
    pub fn project_of(&self, plan: &ApplyPlan) -> ComposeProject {
        let texts = self.files.iter().map(|file| {
            let path = self.directory.join(file);
            let text = plan
                .changes()
                .iter()
                .find(|change| change.path == path)
                .map_or_else(|| self.input(file), |change| change.updated.clone());
            (path, text)
        });
        ComposeProject::from_texts(texts).unwrap()
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose")
}

pub fn all_cases() -> Vec<Case> {
    let mut directories: Vec<PathBuf> = fs::read_dir(fixtures())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("case.json").exists())
        .collect();
    directories.sort();
    directories
        .into_iter()
        .map(|directory| {
            let json = fs::read_to_string(directory.join("case.json")).unwrap();
            let case: CaseFile = serde_json::from_str(&json)
                .unwrap_or_else(|error| panic!("{}: {error}", directory.display()));
            let privileged = match case.privileged.as_deref() {
                None | Some("keep") => PrivilegedPolicy::Keep,
                Some("remove") => PrivilegedPolicy::Remove,
                Some(other) => panic!("{}: privileged: {other}?", directory.display()),
            };
            Case {
                name: directory
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                directory,
                files: case.files,
                recommendations: case.recommendations,
                privileged,
                services: case.services,
            }
        })
        .collect()
}
