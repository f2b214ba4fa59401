//! From what a person types to the subject whose profile they mean.
//!
//! A text query is tried against these forms in order; the first form that matches anything
//! decides, and more than one match within that form is ambiguous:
//!
//! 1. `container:…`, `service:…`, `image:…`: only that kind (the rest resolved as below);
//! 2. a full 64-hex container id;
//! 3. a container name (Compose recreates containers under the same name: the running one, else
//!    the most recently seen, is meant);
//! 4. a container id prefix of at least [`MIN_ID_PREFIX`] hex digits;
//! 5. `project/service`;
//! 6. an image name as the container was created from it (`busybox` also finds `busybox:latest`);
//! 7. a bare Compose service name, when only one project has it;
//! 8. `host`: checks made outside any container.
//!
//! Nothing matching is NOT_FOUND with the closest names as suggestions (edit distance).

use std::collections::BTreeSet;

use super::error::ApiError;
use crate::profile::Subject;

/// The shortest container id prefix accepted, so that a short word is never taken for an id.
pub const MIN_ID_PREFIX: usize = 4;

/// How many suggestions a NOT_FOUND carries at most.
const MAX_SUGGESTIONS: usize = 5;

/// What a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Free text, resolved by the rules above.
    Text(String),
    /// Exactly this full container id.
    ContainerId(String),
    Service {
        project: String,
        service: String,
    },
    Image(String),
    Host,
}

/// A container a query can name: remembered by the store, running now, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownContainer {
    pub id: String,
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub running: bool,
    pub last_seen_ms: i64,
}

impl KnownContainer {
    fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    fn service(&self) -> Option<(&str, &str)> {
        Some((
            self.compose_project.as_deref()?,
            self.compose_service.as_deref()?,
        ))
    }
}

/// Everything a query can name, taken at one moment.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    containers: Vec<KnownContainer>,
    services: BTreeSet<(String, String)>,
    images: BTreeSet<String>,
}

impl Directory {
    /// Builds the directory from the known containers and the subjects that have profiles
    /// (services and images may outlive their containers).
    pub fn new(containers: Vec<KnownContainer>, subjects: &[Subject]) -> Self {
        let mut services = BTreeSet::new();
        let mut images = BTreeSet::new();
        for container in &containers {
            if let Some((project, service)) = container.service() {
                services.insert((project.to_owned(), service.to_owned()));
            }
            if !container.image.is_empty() {
                images.insert(container.image.clone());
            }
        }
        let mut known_ids: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        let mut orphans = Vec::new();
        for subject in subjects {
            match subject {
                Subject::Service { project, service } => {
                    services.insert((project.clone(), service.clone()));
                }
                Subject::Image { name } => {
                    images.insert(name.clone());
                }
                Subject::Container { id } if known_ids.insert(id.as_str()) => {
                    orphans.push(id.clone())
                }
                Subject::Container { .. } | Subject::Host => {}
            }
        }
        let mut containers = containers;
        // A profile whose container record is gone still answers to its id.
        containers.extend(orphans.into_iter().map(|id| KnownContainer {
            name: String::new(),
            id,
            image: String::new(),
            compose_project: None,
            compose_service: None,
            running: false,
            last_seen_ms: 0,
        }));
        Self {
            containers,
            services,
            images,
        }
    }

    /// The containers, as given.
    pub fn containers(&self) -> &[KnownContainer] {
        &self.containers
    }

    /// The container with this full id.
    pub fn container(&self, id: &str) -> Option<&KnownContainer> {
        self.containers.iter().find(|container| container.id == id)
    }

    /// Whether a subject is known even if it has no profile yet (a container that made no
    /// check so far).
    pub fn knows(&self, subject: &Subject) -> bool {
        match subject {
            Subject::Container { id } => self.container(id).is_some(),
            Subject::Service { project, service } => self
                .services
                .contains(&(project.to_owned(), service.to_owned())),
            Subject::Image { name } => self.images.contains(name),
            Subject::Host => true,
        }
    }

    /// Resolves a query to one subject.
    pub fn resolve(&self, query: &Query) -> Result<Subject, ApiError> {
        match query {
            Query::Text(text) => self.resolve_text(text),
            Query::ContainerId(id) => match self.container(id) {
                Some(container) => Ok(container_subject(container)),
                None => Err(self.not_found(id)),
            },
            Query::Service { project, service } => {
                let subject = Subject::Service {
                    project: project.clone(),
                    service: service.clone(),
                };
                match self.knows(&subject) {
                    true => Ok(subject),
                    false => Err(self.not_found(&format!("{project}/{service}"))),
                }
            }
            Query::Image(name) => self.find_image(name).ok_or_else(|| self.not_found(name)),
            Query::Host => Ok(Subject::Host),
        }
    }

    fn resolve_text(&self, text: &str) -> Result<Subject, ApiError> {
        let query = text.trim();
        if query.is_empty() {
            return Err(ApiError::InvalidArgument(
                "empty selector: name a container (id, id prefix or name), a Compose service as `project/service`, an image, or `host`".into(),
            ));
        }
        if let Some(rest) = query.strip_prefix("container:") {
            return self
                .find_container(rest.trim_start_matches('/'))?
                .ok_or_else(|| self.not_found(rest));
        }
        if let Some(rest) = query.strip_prefix("service:") {
            return match rest.contains('/') {
                true => self.find_qualified_service(rest),
                false => self.find_bare_service(rest)?,
            }
            .ok_or_else(|| self.not_found(rest));
        }
        if let Some(rest) = query.strip_prefix("image:") {
            return self.find_image(rest).ok_or_else(|| self.not_found(rest));
        }
        if let Some(subject) = self.find_container(query.trim_start_matches('/'))? {
            return Ok(subject);
        }
        if let Some(subject) = self.find_qualified_service(query) {
            return Ok(subject);
        }
        if let Some(subject) = self.find_image(query) {
            return Ok(subject);
        }
        if let Some(subject) = self.find_bare_service(query)? {
            return Ok(subject);
        }
        if query == "host" {
            return Ok(Subject::Host);
        }
        Err(self.not_found(query))
    }

    /// Full id, then name, then unique id prefix.
    fn find_container(&self, query: &str) -> Result<Option<Subject>, ApiError> {
        if let Some(container) = self.container(query) {
            return Ok(Some(container_subject(container)));
        }
        let named = self
            .containers
            .iter()
            .filter(|container| !container.name.is_empty() && container.name == query)
            .max_by_key(|container| (container.running, container.last_seen_ms));
        if let Some(container) = named {
            return Ok(Some(container_subject(container)));
        }
        if query.len() < MIN_ID_PREFIX || !query.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let prefix = query.to_ascii_lowercase();
        let matches: Vec<&KnownContainer> = self
            .containers
            .iter()
            .filter(|container| container.id.starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [only] => Ok(Some(container_subject(only))),
            several => Err(ApiError::Ambiguous {
                query: query.to_owned(),
                kind: "container id",
                candidates: several
                    .iter()
                    .map(|container| describe_container(container))
                    .collect(),
            }),
        }
    }

    /// `project/service`.
    fn find_qualified_service(&self, query: &str) -> Option<Subject> {
        let (project, service) = query.split_once('/')?;
        self.services
            .contains(&(project.to_owned(), service.to_owned()))
            .then(|| Subject::Service {
                project: project.to_owned(),
                service: service.to_owned(),
            })
    }

    /// A service name only one project has.
    fn find_bare_service(&self, query: &str) -> Result<Option<Subject>, ApiError> {
        if query.contains('/') {
            return Ok(None);
        }
        let matches: Vec<&(String, String)> = self
            .services
            .iter()
            .filter(|(_, service)| service == query)
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [(project, service)] => Ok(Some(Subject::Service {
                project: project.clone(),
                service: service.clone(),
            })),
            several => Err(ApiError::Ambiguous {
                query: query.to_owned(),
                kind: "Compose service",
                candidates: several
                    .iter()
                    .map(|(project, service)| format!("{project}/{service}"))
                    .collect(),
            }),
        }
    }

    fn find_image(&self, query: &str) -> Option<Subject> {
        let tagged = format!("{query}:latest");
        [query, tagged.as_str()]
            .into_iter()
            .find(|name| self.images.contains(*name))
            .map(|name| Subject::Image {
                name: name.to_owned(),
            })
    }

    fn not_found(&self, query: &str) -> ApiError {
        ApiError::NotFound {
            query: query.to_owned(),
            suggestions: self.suggestions(query),
        }
    }

    /// Known names close to `query`: by edit distance, or containing it.
    fn suggestions(&self, query: &str) -> Vec<String> {
        let query = query.to_ascii_lowercase();
        let mut candidates: Vec<(String, String)> = Vec::new();
        for container in &self.containers {
            if !container.name.is_empty() {
                candidates.push((
                    container.name.clone(),
                    format!("{} (container {})", container.name, container.short_id()),
                ));
            }
            candidates.push((
                container.short_id().to_owned(),
                format!("{} (container id)", container.short_id()),
            ));
        }
        for (project, service) in &self.services {
            candidates.push((
                format!("{project}/{service}"),
                format!("{project}/{service} (Compose service)"),
            ));
            candidates.push((
                service.clone(),
                format!("{project}/{service} (Compose service)"),
            ));
        }
        for image in &self.images {
            candidates.push((image.clone(), format!("{image} (image)")));
        }
        let mut scored: Vec<(usize, String)> = candidates
            .into_iter()
            .filter_map(|(key, label)| {
                let key = key.to_ascii_lowercase();
                let distance = strsim::levenshtein(&query, &key);
                let close = distance <= (key.len() / 3).max(2);
                let contains = query.len() >= 3 && key.contains(&query)
                    || key.len() >= 3 && query.contains(&key);
                (close || contains).then_some((distance, label))
            })
            .collect();
        scored.sort();
        let mut seen = BTreeSet::new();
        scored
            .into_iter()
            .filter(|(_, label)| seen.insert(label.clone()))
            .map(|(_, label)| label)
            .take(MAX_SUGGESTIONS)
            .collect()
    }
}

fn container_subject(container: &KnownContainer) -> Subject {
    Subject::Container {
        id: container.id.clone(),
    }
}

fn describe_container(container: &KnownContainer) -> String {
    match container.name.is_empty() {
        true => container.short_id().to_owned(),
        false => format!("{} ({})", container.short_id(), container.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id_start: &str, name: &str, service: Option<(&str, &str)>) -> KnownContainer {
        KnownContainer {
            id: format!("{id_start:0<64}"),
            name: name.into(),
            image: "registry.local/shop/web:1.2".into(),
            compose_project: service.map(|(p, _)| p.into()),
            compose_service: service.map(|(_, s)| s.into()),
            running: true,
            last_seen_ms: 10,
        }
    }

    fn directory() -> Directory {
        Directory::new(
            vec![
                container("3f2a11", "shop-web-1", Some(("shop", "web"))),
                container("3f2a22", "shop-db-1", Some(("shop", "db"))),
                container("77bb", "blog-web-1", Some(("blog", "web"))),
                container("99cc", "lonely", None),
            ],
            &[
                Subject::Image {
                    name: "busybox:latest".into(),
                },
                Subject::Service {
                    project: "old".into(),
                    service: "worker".into(),
                },
            ],
        )
    }

    fn text(query: &str) -> Result<Subject, ApiError> {
        directory().resolve(&Query::Text(query.into()))
    }

    fn id(start: &str) -> Subject {
        Subject::Container {
            id: format!("{start:0<64}"),
        }
    }

    fn service(project: &str, service: &str) -> Subject {
        Subject::Service {
            project: project.into(),
            service: service.into(),
        }
    }

    #[test]
    fn every_form_resolves() {
        assert_eq!(text(&format!("{:0<64}", "3f2a11")).unwrap(), id("3f2a11"));
        assert_eq!(text("shop-web-1").unwrap(), id("3f2a11"));
        assert_eq!(text("/shop-web-1").unwrap(), id("3f2a11"));
        assert_eq!(text("3f2a1").unwrap(), id("3f2a11"));
        assert_eq!(text("shop/web").unwrap(), service("shop", "web"));
        assert_eq!(text("worker").unwrap(), service("old", "worker"));
        assert_eq!(text("db").unwrap(), service("shop", "db"));
        assert_eq!(
            text("busybox").unwrap(),
            Subject::Image {
                name: "busybox:latest".into()
            }
        );
        assert_eq!(
            text("registry.local/shop/web:1.2").unwrap(),
            Subject::Image {
                name: "registry.local/shop/web:1.2".into()
            }
        );
        assert_eq!(text("host").unwrap(), Subject::Host);
        assert_eq!(text("container:lonely").unwrap(), id("99cc"));
        assert_eq!(text("service:blog/web").unwrap(), service("blog", "web"));
        assert_eq!(
            text("image:busybox:latest").unwrap(),
            Subject::Image {
                name: "busybox:latest".into()
            }
        );
    }

    #[test]
    fn exact_kinds_resolve_only_their_kind() {
        let directory = directory();
        assert_eq!(
            directory
                .resolve(&Query::ContainerId(format!("{:0<64}", "77bb")))
                .unwrap(),
            id("77bb")
        );
        assert!(matches!(
            directory.resolve(&Query::ContainerId("77bb".into())),
            Err(ApiError::NotFound { .. })
        ));
        assert!(matches!(
            directory.resolve(&Query::Service {
                project: "shop".into(),
                service: "nope".into()
            }),
            Err(ApiError::NotFound { .. })
        ));
        assert_eq!(directory.resolve(&Query::Host).unwrap(), Subject::Host);
        assert!(matches!(
            text("container:shop/web"),
            Err(ApiError::NotFound { .. })
        ));
    }

    #[test]
    fn ambiguity_lists_every_candidate() {
        match text("3f2a") {
            Err(ApiError::Ambiguous {
                kind, candidates, ..
            }) => {
                assert_eq!(kind, "container id");
                assert_eq!(
                    candidates,
                    ["3f2a11000000 (shop-web-1)", "3f2a22000000 (shop-db-1)"]
                );
            }
            other => panic!("{other:?}"),
        }
        match text("web") {
            Err(ApiError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates, ["blog/web", "shop/web"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_hex_words_are_not_id_prefixes() {
        // "3f2" is below the minimum: not an id prefix, and nothing else is called that.
        assert!(matches!(text("3f2"), Err(ApiError::NotFound { .. })));
    }

    #[test]
    fn unknown_names_suggest_close_ones() {
        match text("shop-wep-1") {
            Err(ApiError::NotFound { suggestions, .. }) => {
                assert_eq!(suggestions[0], "shop-web-1 (container 3f2a11000000)");
            }
            other => panic!("{other:?}"),
        }
        match text("shop/wbe") {
            Err(ApiError::NotFound { suggestions, .. }) => {
                assert!(
                    suggestions.contains(&"shop/web (Compose service)".to_owned()),
                    "{suggestions:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        match text("completely-different") {
            Err(ApiError::NotFound { suggestions, .. }) => assert!(suggestions.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(text("  "), Err(ApiError::InvalidArgument(_))));
    }

    #[test]
    fn recreated_containers_resolve_to_the_running_one() {
        let mut old = container("aaaa", "shop-web-1", Some(("shop", "web")));
        old.running = false;
        old.last_seen_ms = 99;
        let new = container("bbbb", "shop-web-1", Some(("shop", "web")));
        let directory = Directory::new(vec![old, new], &[]);
        assert_eq!(
            directory
                .resolve(&Query::Text("shop-web-1".into()))
                .unwrap(),
            id("bbbb")
        );
    }

    #[test]
    fn profiles_without_a_container_record_answer_to_their_id() {
        let orphan = format!("{:0<64}", "dead");
        let directory = Directory::new(vec![], &[Subject::Container { id: orphan.clone() }]);
        assert_eq!(
            directory.resolve(&Query::Text("dead".into())).unwrap(),
            Subject::Container { id: orphan }
        );
    }
}
