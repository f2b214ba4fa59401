//! The Compose files given with `-f`, read together the way Compose merges them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{
    error::ComposeError,
    file::{ComposeFile, ExtendsRef},
    settings::{CapSettings, PartialCapSettings},
};

/// One or more Compose files, in `-f` order (later files override earlier ones).
#[derive(Debug, Clone)]
pub struct ComposeProject {
    pub(crate) files: Vec<ComposeFile>,
}

impl ComposeProject {
    /// Reads the files from disk, remembering their bytes so a later write can refuse when one
    /// changed in between.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Self, ComposeError> {
        let files = paths
            .iter()
            .map(|path| ComposeFile::read(path.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(files)
    }

    /// Parses texts that did not come from disk (tests, stdin). Such a project can be checked
    /// and planned, but [`super::ApplyPlan::write`] refuses to write it.
    pub fn from_texts(
        files: impl IntoIterator<Item = (PathBuf, String)>,
    ) -> Result<Self, ComposeError> {
        let files = files
            .into_iter()
            .map(|(path, text)| ComposeFile::parse(path, text, None))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(files)
    }

    pub(crate) fn from_files(files: Vec<ComposeFile>) -> Result<Self, ComposeError> {
        let Some(first) = files.first() else {
            return Err(ComposeError::NotCompose {
                path: PathBuf::new(),
                message: "no Compose file given".to_owned(),
            });
        };
        if !files.iter().any(ComposeFile::has_services_key) {
            return Err(ComposeError::NotCompose {
                path: first.path.clone(),
                message: "no `services:` mapping found; capprof reads Compose files that list \
                          their services under `services:`"
                    .to_owned(),
            });
        }
        Ok(Self { files })
    }

    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|file| file.path.as_path()).collect()
    }

    /// Every service in the files, in order of first appearance.
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for file in &self.files {
            for name in file.service_names() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    pub fn has_service(&self, name: &str) -> bool {
        self.files
            .iter()
            .any(|file| file.service_entry(name).is_some())
    }

    pub(crate) fn unknown_service(&self, name: &str) -> ComposeError {
        ComposeError::UnknownService {
            name: name.to_owned(),
            available: self.service_names(),
        }
    }

    /// A service's `cap_add`, `cap_drop` and `privileged` as Compose resolves them: files merged
    /// in order, `<<:` merge keys applied, then `extends` (which merges the same way).
    pub fn capability_settings(&self, service: &str) -> Result<CapSettings, ComposeError> {
        if !self.has_service(service) {
            return Err(self.unknown_service(service));
        }
        let mut resolver = ExtendsResolver {
            project: self,
            external: HashMap::new(),
            chain: Vec::new(),
        };
        Ok(resolver.settings(Scope::Project, service)?.resolved())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    /// The `-f` files merged.
    Project,
    /// A file named by `extends: {file: ...}`, read on its own.
    External(PathBuf),
}

struct ExtendsResolver<'p> {
    project: &'p ComposeProject,
    external: HashMap<PathBuf, ComposeFile>,
    chain: Vec<(Scope, String)>,
}

impl ExtendsResolver<'_> {
    fn files(&self, scope: &Scope) -> Vec<&ComposeFile> {
        match scope {
            Scope::Project => self.project.files.iter().collect(),
            Scope::External(path) => self.external.get(path).into_iter().collect(),
        }
    }

    fn settings(
        &mut self,
        scope: Scope,
        service: &str,
    ) -> Result<PartialCapSettings, ComposeError> {
        let key = (scope.clone(), service.to_owned());
        if self.chain.contains(&key) {
            let chain: Vec<&str> = self.chain.iter().map(|(_, name)| name.as_str()).collect();
            return Err(ComposeError::Extends {
                service: chain.first().copied().unwrap_or(service).to_owned(),
                target: service.to_owned(),
                message: format!("`extends` loops: {} -> {service}", chain.join(" -> ")),
            });
        }
        let mut own = PartialCapSettings::default();
        let mut extends: Option<(ExtendsRef, PathBuf)> = None;
        let mut found = false;
        for file in self.files(&scope) {
            if file.service_entry(service).is_none() {
                continue;
            }
            found = true;
            own = own.merged_with(&file.partial_settings(service)?);
            if let Some(reference) = file.extends(service)? {
                let directory = file.path.parent().unwrap_or(Path::new("")).to_path_buf();
                extends = Some((reference, directory));
            }
        }
        if !found {
            return Err(ComposeError::Extends {
                service: self
                    .chain
                    .last()
                    .map_or(service, |(_, name)| name.as_str())
                    .to_owned(),
                target: service.to_owned(),
                message: "no such service".to_owned(),
            });
        }
        let Some((reference, directory)) = extends else {
            return Ok(own);
        };
        let base_scope = match &reference.file {
            None => scope.clone(),
            Some(file) => self.load_external(service, &directory.join(file))?,
        };
        self.chain.push(key);
        let base = self.settings(base_scope, &reference.service);
        self.chain.pop();
        Ok(base?.merged_with(&own))
    }

    fn load_external(&mut self, service: &str, path: &Path) -> Result<Scope, ComposeError> {
        let path = path.to_path_buf();
        if !self.external.contains_key(&path) {
            let file = ComposeFile::read(&path).map_err(|error| ComposeError::Extends {
                service: service.to_owned(),
                target: path.display().to_string(),
                message: error.to_string(),
            })?;
            self.external.insert(path.clone(), file);
        }
        Ok(Scope::External(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capability::Capability::*, compose::settings::CapSet};

    fn project(files: &[(&str, &str)]) -> ComposeProject {
        ComposeProject::from_texts(
            files
                .iter()
                .map(|(path, text)| (PathBuf::from(path), (*text).to_owned())),
        )
        .unwrap()
    }

    #[test]
    fn override_files_union_lists_and_override_privileged() {
        let project = project(&[
            (
                "a.yml",
                "services:\n  web:\n    image: x\n    cap_add: [NET_ADMIN, CHOWN]\n    privileged: true\n  db:\n    image: y\n",
            ),
            (
                "b.yml",
                "services:\n  web:\n    cap_add: [KILL, NET_ADMIN]\n    cap_drop: [ALL]\n    privileged: false\n  cache:\n    image: z\n",
            ),
        ]);
        assert_eq!(project.service_names(), ["web", "db", "cache"]);
        let web = project.capability_settings("web").unwrap();
        assert_eq!(web.cap_add, CapSet::of([NetAdmin, Chown, Kill]));
        assert_eq!(web.cap_drop, CapSet::only_all());
        assert!(!web.privileged);
        assert!(matches!(
            project.capability_settings("nope"),
            Err(ComposeError::UnknownService { .. })
        ));
    }

    #[test]
    fn extends_within_the_project_merges_the_base() {
        let project = project(&[(
            "a.yml",
            "services:\n  base:\n    image: x\n    cap_add: [SYS_TIME]\n    privileged: true\n  app:\n    extends: base\n    cap_add: [KILL]\n  app2:\n    extends: {service: app}\n    privileged: false\n",
        )]);
        let app = project.capability_settings("app").unwrap();
        assert_eq!(app.cap_add, CapSet::of([SysTime, Kill]));
        assert!(app.privileged);
        let app2 = project.capability_settings("app2").unwrap();
        assert_eq!(app2.cap_add, CapSet::of([SysTime, Kill]));
        assert!(!app2.privileged);
    }

    #[test]
    fn extends_from_another_file_reads_it_relative_to_the_extending_file() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("common.yml"),
            "services:\n  base:\n    image: x\n    cap_add: [NET_RAW]\n    cap_drop: [ALL]\n",
        )
        .unwrap();
        let project = project(&[(
            directory.path().join("compose.yml").to_str().unwrap(),
            "services:\n  app:\n    extends:\n      file: common.yml\n      service: base\n",
        )]);
        let app = project.capability_settings("app").unwrap();
        assert_eq!(app.cap_add, CapSet::of([NetRaw]));
        assert!(app.cap_drop.all);
    }

    #[test]
    fn extends_loops_and_missing_bases_are_errors() {
        let project = project(&[(
            "a.yml",
            "services:\n  a:\n    extends: b\n  b:\n    extends: a\n  c:\n    extends: nowhere\n",
        )]);
        let error = project.capability_settings("a").unwrap_err().to_string();
        assert!(error.contains("loops"), "{error}");
        let error = project.capability_settings("c").unwrap_err().to_string();
        assert!(error.contains("no such service"), "{error}");
    }

    #[test]
    fn a_project_needs_services() {
        let error =
            ComposeProject::from_texts([(PathBuf::from("a.yml"), "version: '3'\n".to_owned())])
                .unwrap_err();
        assert!(error.to_string().contains("no `services:`"), "{error}");
    }
}
