//! The profiles of a Compose project's services, for `capprof profile` and `capprof compose
//! apply/check`: asked from the daemon's API when a daemon runs (or an embedded one, during a
//! profiling run), read from the daemon's store otherwise.
//!
//! Reading the store needs no tracer: `compose apply` and `compose check` only read what earlier
//! runs recorded. When no daemon runs, every profile is already folded and stored (a daemon and
//! an embedded run store each poll, and fold the rest before they exit).

use std::path::{Path, PathBuf};

use capprof_proto::v1 as pb;

use crate::{
    api::{ApiClient, ClientError, ClientTarget, FailureKind},
    compose::{Recommendations, ServiceRecommendation},
    profile::Subject,
    recommend::{self, Recommendation, RecommendedCapability},
    store::{DATABASE_FILE, Store, StoreError},
};

/// Why profiles cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileSourceError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where profiles come from.
#[derive(Debug)]
pub enum ProfileSource {
    /// A daemon's API (a running daemon, or the one a profiling run embeds).
    Api(ApiClient),
    /// The store of a daemon that is not running.
    Store(Store),
    /// No daemon runs and nothing was ever stored in this state directory.
    Empty { state_dir: PathBuf },
}

impl ProfileSource {
    /// The daemon at `target` when one answers; otherwise its store in `state_dir`, without
    /// creating one.
    pub async fn open(target: &ClientTarget, state_dir: &Path) -> Result<Self, ProfileSourceError> {
        match ApiClient::connect(target).await {
            Ok(client) => Ok(ProfileSource::Api(client)),
            Err(error) if error.kind() == FailureKind::DaemonNotRunning => {
                tracing::debug!(%error, "reading the store directly");
                if state_dir.join(DATABASE_FILE).is_file() {
                    Ok(ProfileSource::Store(Store::open(state_dir)?))
                } else {
                    Ok(ProfileSource::Empty {
                        state_dir: state_dir.to_path_buf(),
                    })
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Where the profiles come from, for messages.
    pub fn describe(&self) -> String {
        match self {
            ProfileSource::Api(_) => "the capprof daemon".to_owned(),
            ProfileSource::Store(_) => "the stored profiles (no daemon is running)".to_owned(),
            ProfileSource::Empty { state_dir } => format!(
                "{} (no daemon is running, and no profile was ever stored there)",
                state_dir.display()
            ),
        }
    }

    /// A service's merged profile as a recommendation, or `None` when no check of it was ever
    /// recorded.
    pub async fn service(
        &mut self,
        project: &str,
        service: &str,
    ) -> Result<Option<Recommendation>, ProfileSourceError> {
        let recommendation = match self {
            ProfileSource::Api(client) => {
                let selector = pb::ProfileSelector {
                    selector: Some(pb::profile_selector::Selector::Service(pb::ServiceRef {
                        project: project.to_owned(),
                        service: service.to_owned(),
                    })),
                };
                match client.recommendation_for(selector).await {
                    Ok(recommendation) => recommendation,
                    Err(error) if error.kind() == FailureKind::NotFound => return Ok(None),
                    Err(error) => return Err(error.into()),
                }
            }
            ProfileSource::Store(store) => {
                let subject = Subject::Service {
                    project: project.to_owned(),
                    service: service.to_owned(),
                };
                match store.profile(&subject)? {
                    Some(profile) => recommend::recommend(&profile),
                    None => return Ok(None),
                }
            }
            ProfileSource::Empty { .. } => return Ok(None),
        };
        Ok((recommendation.total_checks > 0).then_some(recommendation))
    }

    /// The profiles of `services` of `project`, in the order given.
    pub async fn project(
        &mut self,
        project: &str,
        services: &[String],
    ) -> Result<ProjectProfiles, ProfileSourceError> {
        let mut profiles = ProjectProfiles {
            project: project.to_owned(),
            ..ProjectProfiles::default()
        };
        for service in services {
            match self.service(project, service).await? {
                Some(recommendation) => profiles.profiled.push((service.clone(), recommendation)),
                None => profiles.not_profiled.push(service.clone()),
            }
        }
        Ok(profiles)
    }
}

/// A project's services, with a profile or without.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectProfiles {
    pub project: String,
    /// Services with recorded checks, and what they need.
    pub profiled: Vec<(String, Recommendation)>,
    /// Services nothing was recorded for.
    pub not_profiled: Vec<String>,
}

impl ProjectProfiles {
    /// What `compose apply` and `compose check` need: per profiled service, each capability of
    /// the minimal `cap_add` with a short reason for its comment.
    pub fn compose_recommendations(&self) -> Recommendations {
        self.profiled
            .iter()
            .map(|(service, recommendation)| {
                (
                    service.clone(),
                    ServiceRecommendation::new(
                        recommendation
                            .cap_add
                            .iter()
                            .map(|needed| (needed.capability, compose_comment(needed))),
                    ),
                )
            })
            .collect()
    }
}

/// The reason written next to a capability in a Compose file: who made which call and where
/// the kernel checked, without counts and dates, so that the line reads the same after every
/// profiling run. `capprof report` has the full evidence.
pub fn compose_comment(needed: &RecommendedCapability) -> String {
    let Some(main) = needed.evidence.first() else {
        return needed.reason.clone();
    };
    let who = main.comm.as_deref().unwrap_or("a process");
    let mut comment = format!("{who}: {}()", main.syscall);
    if let Some(path) = &main.kernel_path {
        comment.push_str(&format!(" → {path}"));
    }
    if needed.was_denied {
        comment.push_str(", denied while profiling");
    }
    if main.checked != needed.capability.kernel_name() {
        comment.push_str(&format!(" (kernel checked {})", main.checked));
    }
    comment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::check;
    use crate::{
        capability::Capability,
        profile::{EntryVerdict, Profile, SubjectInfo},
        store::{Batch, ContainerRecord},
    };

    fn web_profile() -> Profile {
        Profile {
            subject: Subject::Service {
                project: "shop".into(),
                service: "web".into(),
            },
            info: SubjectInfo::default(),
            entries: vec![
                check(
                    Capability::NetBindService,
                    EntryVerdict::Denied,
                    49,
                    &["cap_capable", "ns_capable", "__inet_bind+0x1ea"],
                )
                .by("httpd")
                .pid(7)
                .count(3)
                .entry(),
            ],
        }
    }

    #[test]
    fn comments_name_the_call_without_counts_or_dates() {
        let recommendation = recommend::recommend(&web_profile());
        let comment = compose_comment(&recommendation.cap_add[0]);
        assert_eq!(
            comment,
            "httpd: bind() → __inet_bind, denied while profiling"
        );
        assert!(recommendation.cap_add[0].reason.contains("3×"));
    }

    #[test]
    fn profiles_map_to_compose_recommendations() {
        let profiles = ProjectProfiles {
            project: "shop".into(),
            profiled: vec![("web".into(), recommend::recommend(&web_profile()))],
            not_profiled: vec!["db".into()],
        };
        let recommendations = profiles.compose_recommendations();
        assert_eq!(recommendations.services().collect::<Vec<_>>(), ["web"]);
        assert_eq!(
            recommendations.get("web").unwrap().sorted(),
            [(
                Capability::NetBindService,
                "httpd: bind() → __inet_bind, denied while profiling"
            )]
        );
    }

    #[tokio::test]
    async fn without_a_daemon_the_store_is_read_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = ClientTarget::Unix(dir.path().join("no-daemon.sock"));
        let state = dir.path().join("state");
        let mut empty = ProfileSource::open(&target, &state).await.unwrap();
        assert!(matches!(empty, ProfileSource::Empty { .. }));
        assert_eq!(empty.service("shop", "web").await.unwrap(), None);
        assert!(!state.exists(), "reading must not create a state directory");

        let mut store = Store::open(&state).unwrap();
        let container = ContainerRecord {
            id: "ab".repeat(32),
            name: "shop-web-1".into(),
            image: "web:1".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("web".into()),
            first_seen_ms: 1,
            last_seen_ms: 2,
            exited_at_ms: None,
        };
        let profile = web_profile();
        let entry = &profile.entries[0];
        store
            .apply(&Batch {
                containers: vec![container.clone()],
                memberships: vec![(profile.subject.clone(), container.id.clone())],
                entries: vec![crate::store::EntryDelta {
                    subject: profile.subject.clone(),
                    key: entry.key,
                    delta: entry.count,
                    seen_at_ms: entry.first_seen_ms,
                    call_sites: entry.call_sites.clone(),
                }],
                ..Batch::default()
            })
            .unwrap();
        drop(store);

        let mut source = ProfileSource::open(&target, &state).await.unwrap();
        assert!(matches!(source, ProfileSource::Store(_)));
        let profiles = source
            .project("shop", &["web".to_owned(), "db".to_owned()])
            .await
            .unwrap();
        assert_eq!(profiles.not_profiled, ["db"]);
        assert_eq!(profiles.profiled.len(), 1);
        assert_eq!(profiles.profiled[0].1.cap_add_names(), ["NET_BIND_SERVICE"]);
    }
}
