//! One Compose file: its text, its YAML tree, and the services it defines.

use std::path::{Path, PathBuf};

use super::{
    atomic::FileSnapshot,
    error::ComposeError,
    settings::{CapSet, PartialCapSettings},
    yaml::{Entry, Node, NodeKind, YamlDocument},
};
use crate::capability::Capability;

/// The capability-related service keys capprof reads and writes.
pub(crate) const CAP_ADD: &str = "cap_add";
pub(crate) const CAP_DROP: &str = "cap_drop";
pub(crate) const PRIVILEGED: &str = "privileged";

#[derive(Debug, Clone)]
pub(crate) struct ComposeFile {
    pub path: PathBuf,
    pub text: String,
    pub yaml: YamlDocument,
    /// What was on disk when the file was read; `None` for text that never came from disk.
    pub snapshot: Option<FileSnapshot>,
}

/// Where a service key's value comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found<'a> {
    /// The service mapping's own entry.
    Own(&'a Entry),
    /// A mapping merged in with `<<:`.
    Inherited(&'a Node),
}

impl<'a> Found<'a> {
    pub fn value(self) -> &'a Node {
        match self {
            Found::Own(entry) => &entry.value,
            Found::Inherited(value) => value,
        }
    }
}

/// `extends:` of a service, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtendsRef {
    pub service: String,
    pub file: Option<String>,
}

impl ComposeFile {
    pub fn parse(
        path: PathBuf,
        text: String,
        snapshot: Option<FileSnapshot>,
    ) -> Result<Self, ComposeError> {
        let yaml = YamlDocument::parse(&text).map_err(|error| ComposeError::Malformed {
            path: path.clone(),
            line: error.line,
            column: error.column,
            message: error.message,
        })?;
        let file = Self {
            path,
            text,
            yaml,
            snapshot,
        };
        file.validate_shape()?;
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<Self, ComposeError> {
        let (text, snapshot) = FileSnapshot::read(path)?;
        Self::parse(path.to_path_buf(), text, Some(snapshot))
    }

    fn not_compose(&self, message: impl Into<String>) -> ComposeError {
        ComposeError::NotCompose {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn validate_shape(&self) -> Result<(), ComposeError> {
        let Some(root) = &self.yaml.root else {
            return Err(self.not_compose("the file is empty"));
        };
        if root.entries().is_none() {
            return Err(self.not_compose(
                "the top level is not a mapping; a Compose file starts with keys like `services:`",
            ));
        }
        if let Some(services) = self.services_mapping()
            && services.entries().is_none()
            && !services.is_null()
        {
            return Err(self.not_compose(format!(
                "line {}: `services` must be a mapping of service names to their settings",
                self.yaml.line_of(services.start)
            )));
        }
        Ok(())
    }

    /// The value of the top-level `services:` key, aliases followed.
    pub fn services_mapping(&self) -> Option<&Node> {
        let root = self.yaml.root.as_ref()?;
        let entry = own_entry(root, "services")?;
        Some(self.yaml.resolve(&entry.value))
    }

    pub fn has_services_key(&self) -> bool {
        self.services_mapping().is_some()
    }

    pub fn service_names(&self) -> Vec<String> {
        self.services_mapping()
            .and_then(Node::entries)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.key.as_scalar().map(str::to_owned))
            .collect()
    }

    /// The `name: {...}` entry of a service in the `services` mapping.
    pub fn service_entry(&self, name: &str) -> Option<&Entry> {
        own_entry(self.services_mapping()?, name)
    }

    /// The service's settings mapping, aliases followed; `None` when the service is not here or
    /// has no mapping (`web:` with nothing after it).
    pub fn service_mapping(&self, name: &str) -> Option<&Node> {
        let value = self.yaml.resolve(&self.service_entry(name)?.value);
        value.entries().is_some().then_some(value)
    }

    /// Looks a key up in a mapping the way YAML merge keys define: own keys first, then each
    /// mapping merged with `<<:` in order (the first that has it wins), recursively.
    pub fn lookup<'a>(&'a self, mapping: &'a Node, key: &str) -> Option<Found<'a>> {
        if let Some(entry) = own_entry(mapping, key) {
            return Some(Found::Own(entry));
        }
        self.lookup_merged(mapping, key, 0).map(Found::Inherited)
    }

    /// Like [`Self::lookup`] but ignoring the mapping's own entry: what `<<:` would provide.
    pub fn lookup_merged<'a>(
        &'a self,
        mapping: &'a Node,
        key: &str,
        depth: usize,
    ) -> Option<&'a Node> {
        // Merge chains are short; the bound only stops a pathological document.
        if depth > 32 {
            return None;
        }
        for entry in mapping.entries()? {
            if entry.key.as_scalar() != Some("<<") {
                continue;
            }
            let merged = self.yaml.resolve(&entry.value);
            let sources: Vec<&Node> = match &merged.kind {
                NodeKind::Sequence { items } => {
                    items.iter().map(|item| self.yaml.resolve(item)).collect()
                }
                _ => vec![merged],
            };
            for source in sources {
                if let Some(entry) = own_entry(source, key) {
                    return Some(&entry.value);
                }
                if let Some(value) = self.lookup_merged(source, key, depth + 1) {
                    return Some(value);
                }
            }
        }
        None
    }

    fn invalid(&self, service: &str, key: &str, at: &Node, message: String) -> ComposeError {
        ComposeError::InvalidCapabilities {
            path: self.path.clone(),
            line: self.yaml.line_of(at.start),
            service: service.to_owned(),
            key: key.to_owned(),
            message,
        }
    }

    /// Parses a `cap_add`/`cap_drop` value: a block or flow list of names in any spelling
    /// Docker accepts (`NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`) or `ALL`.
    pub fn cap_list(&self, service: &str, key: &str, value: &Node) -> Result<CapSet, ComposeError> {
        let value = self.yaml.resolve(value);
        if value.is_null() {
            return Ok(CapSet::default());
        }
        let NodeKind::Sequence { items } = &value.kind else {
            return Err(self.invalid(
                service,
                key,
                value,
                "it must be a list, like `[NET_ADMIN]` or lines of `- NET_ADMIN`".to_owned(),
            ));
        };
        let mut set = CapSet::default();
        for item in items {
            let item = self.yaml.resolve(item);
            let Some(name) = item.as_scalar() else {
                return Err(self.invalid(
                    service,
                    key,
                    item,
                    "each item must be a capability name".to_owned(),
                ));
            };
            if name.trim().eq_ignore_ascii_case("ALL") {
                set.all = true;
                continue;
            }
            let capability: Capability = name
                .parse()
                .map_err(|error| self.invalid(service, key, item, format!("{error}")))?;
            set.capabilities.insert(capability);
        }
        Ok(set)
    }

    pub fn privileged_flag(&self, service: &str, value: &Node) -> Result<bool, ComposeError> {
        let value = self.yaml.resolve(value);
        // Compose v1 reads YAML 1.1, where yes/no/on/off are booleans too.
        match value.as_scalar().map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "yes" | "on") => Ok(true),
            Some("false" | "no" | "off") => Ok(false),
            _ => Err(self.invalid(
                service,
                PRIVILEGED,
                value,
                "it must be `true` or `false`".to_owned(),
            )),
        }
    }

    /// The capability keys this file sets for a service, `<<:` merges applied.
    pub fn partial_settings(&self, service: &str) -> Result<PartialCapSettings, ComposeError> {
        let Some(mapping) = self.service_mapping(service) else {
            return Ok(PartialCapSettings::default());
        };
        let list = |key: &str| {
            self.lookup(mapping, key)
                .map(|found| self.cap_list(service, key, found.value()))
                .transpose()
        };
        Ok(PartialCapSettings {
            cap_add: list(CAP_ADD)?,
            cap_drop: list(CAP_DROP)?,
            privileged: self
                .lookup(mapping, PRIVILEGED)
                .map(|found| self.privileged_flag(service, found.value()))
                .transpose()?,
        })
    }

    /// The service's `extends:`, in either form (`extends: base` or `{service, file}`).
    pub fn extends(&self, service: &str) -> Result<Option<ExtendsRef>, ComposeError> {
        let Some(mapping) = self.service_mapping(service) else {
            return Ok(None);
        };
        let Some(found) = self.lookup(mapping, "extends") else {
            return Ok(None);
        };
        let value = self.yaml.resolve(found.value());
        if let Some(name) = value.as_scalar() {
            return Ok(Some(ExtendsRef {
                service: name.to_owned(),
                file: None,
            }));
        }
        let field = |key: &str| {
            self.lookup(value, key)
                .and_then(|found| self.yaml.resolve(found.value()).as_scalar())
                .map(str::to_owned)
        };
        match field("service") {
            Some(base) => Ok(Some(ExtendsRef {
                service: base,
                file: field("file"),
            })),
            None => Err(ComposeError::Extends {
                service: service.to_owned(),
                target: format!("line {}", self.yaml.line_of(value.start)),
                message: "`extends` needs a `service:` name".to_owned(),
            }),
        }
    }
}

/// A mapping's own entry for a key (no merge keys).
pub(crate) fn own_entry<'a>(mapping: &'a Node, key: &str) -> Option<&'a Entry> {
    mapping
        .entries()?
        .iter()
        .find(|entry| entry.key.as_scalar() == Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    fn file(text: &str) -> ComposeFile {
        ComposeFile::parse(PathBuf::from("compose.yml"), text.to_owned(), None).unwrap()
    }

    #[test]
    fn reads_every_spelling_of_the_lists() {
        let compose = file(
            "services:\n  web:\n    image: x\n    cap_add: [net_admin, CAP_SYS_TIME, \"Kill\"]\n    cap_drop:\n      - all\n    privileged: no\n",
        );
        let settings = compose.partial_settings("web").unwrap();
        assert_eq!(
            settings.cap_add,
            Some(CapSet::of([NetAdmin, SysTime, Kill]))
        );
        assert_eq!(settings.cap_drop, Some(CapSet::only_all()));
        assert_eq!(settings.privileged, Some(false));
    }

    #[test]
    fn merge_keys_provide_inherited_values_and_own_keys_win() {
        let compose = file(
            "x-base: &base\n  cap_add: [NET_ADMIN]\n  privileged: true\nx-more: &more\n  cap_drop: [ALL]\n  cap_add: [KILL]\nservices:\n  web:\n    <<: [*base, *more]\n    privileged: false\n  api:\n    <<: *more\n",
        );
        let web = compose.partial_settings("web").unwrap();
        assert_eq!(web.cap_add, Some(CapSet::of([NetAdmin])));
        assert_eq!(web.cap_drop, Some(CapSet::only_all()));
        assert_eq!(web.privileged, Some(false));
        let api = compose.partial_settings("api").unwrap();
        assert_eq!(api.cap_add, Some(CapSet::of([Kill])));
        assert_eq!(api.privileged, None);
    }

    #[test]
    fn bad_values_name_the_service_key_and_line() {
        let compose = file("services:\n  web:\n    cap_add: [NET_ADMIN, FLY]\n");
        let error = compose.partial_settings("web").unwrap_err().to_string();
        assert!(
            error.contains("compose.yml:3: cap_add of service `web`"),
            "{error}"
        );
        assert!(error.contains("unknown capability `FLY`"), "{error}");
        let compose = file("services:\n  web:\n    cap_drop: ALL\n");
        let error = compose.partial_settings("web").unwrap_err().to_string();
        assert!(error.contains("must be a list"), "{error}");
        let compose = file("services:\n  web:\n    privileged: sometimes\n");
        assert!(compose.partial_settings("web").is_err());
    }

    #[test]
    fn extends_in_both_forms() {
        let compose = file(
            "services:\n  a:\n    extends: base\n  b:\n    extends:\n      service: base\n      file: common.yml\n  base:\n    image: x\n",
        );
        assert_eq!(
            compose.extends("a").unwrap(),
            Some(ExtendsRef {
                service: "base".to_owned(),
                file: None
            })
        );
        assert_eq!(
            compose.extends("b").unwrap().unwrap().file.as_deref(),
            Some("common.yml")
        );
        assert_eq!(compose.extends("base").unwrap(), None);
    }

    #[test]
    fn refuses_what_is_not_a_compose_file() {
        for text in ["", "- a\n- b\n", "services: [a, b]\n"] {
            let error =
                ComposeFile::parse(PathBuf::from("x.yml"), text.to_owned(), None).unwrap_err();
            assert!(
                matches!(error, ComposeError::NotCompose { .. }),
                "{text:?}: {error}"
            );
        }
        let error = ComposeFile::parse(
            PathBuf::from("x.yml"),
            "services:\n  a: [\n".to_owned(),
            None,
        )
        .unwrap_err();
        assert!(matches!(error, ComposeError::Malformed { .. }), "{error}");
    }
}
