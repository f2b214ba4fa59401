//! The `capprof.v1.CapprofService` implementation over the daemon's shared state.
//!
//! Reads go to the store on blocking threads (SQLite calls block, and the collector holds the
//! same lock while it writes a poll). Live streams subscribe to the daemon's broadcasts before
//! reading the current state, so no change falls between the first answer and the updates, and
//! they end with UNAVAILABLE when the daemon shuts down, so that shutdown never waits on a client.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use capprof_proto::v1::{self as pb, capprof_service_server::CapprofService};
use futures_util::{Stream, stream};
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};
use tracing::debug;

use super::{
    convert,
    error::ApiError,
    selector::{Directory, KnownContainer, Query},
};
use crate::{
    capability::Capability,
    daemon::{DaemonState, LiveCheck, ProfileChange},
    profile::{Profile, Subject, SubjectInfo},
    recommend::{Recommendation, recommend},
    store::Store,
};

/// A container the engine reports now, whether or not it has made a check yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningContainer {
    /// The full 64-hex id.
    pub id: String,
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
}

/// Answers "which containers run now?" (the daemon plugs in its Docker tracker).
pub trait RunningContainers: Send + Sync + 'static {
    fn running(&self) -> Vec<RunningContainer>;
}

/// For a daemon that follows no container engine: only remembered containers are listed.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoContainerEngine;

impl RunningContainers for NoContainerEngine {
    fn running(&self) -> Vec<RunningContainer> {
        Vec::new()
    }
}

/// Whether new checks are being recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracerHealth {
    Collecting,
    /// The collector stopped (an error); stored profiles are still served.
    Stopped {
        reason: String,
    },
    /// The kernel has no usable hook on `cap_capable`; stored profiles are still served.
    KernelUnsupported {
        reason: String,
    },
}

impl TracerHealth {
    /// The error for a live stream that cannot get anything new.
    fn refusal(&self) -> Option<ApiError> {
        match self {
            TracerHealth::Collecting => None,
            TracerHealth::Stopped { reason } => Some(ApiError::TracerStopped {
                reason: reason.clone(),
            }),
            TracerHealth::KernelUnsupported { reason } => Some(ApiError::KernelUnsupported {
                reason: reason.clone(),
            }),
        }
    }
}

/// What the API serves.
#[derive(Clone)]
pub struct ApiContext {
    pub state: Arc<DaemonState>,
    pub containers: Arc<dyn RunningContainers>,
    /// The daemon updates this when the collector stops.
    pub tracer_health: watch::Receiver<TracerHealth>,
}

impl std::fmt::Debug for ApiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiContext")
            .field("tracer_health", &*self.tracer_health.borrow())
            .finish_non_exhaustive()
    }
}

/// The service. `shutdown` turns `true` when the daemon stops; live streams then end.
#[derive(Clone, Debug)]
pub struct ApiService {
    context: ApiContext,
    shutdown: watch::Receiver<bool>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ApiService {
    pub fn new(context: ApiContext, shutdown: watch::Receiver<bool>) -> Self {
        Self { context, shutdown }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> pb::capprof_service_server::CapprofServiceServer<Self> {
        pb::capprof_service_server::CapprofServiceServer::new(self)
    }

    fn refuse_if_not_collecting(&self) -> Result<(), ApiError> {
        if *self.shutdown.borrow() {
            return Err(ApiError::ShuttingDown);
        }
        match self.context.tracer_health.borrow().refusal() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Runs `work` with the store and a fresh directory on a blocking thread.
async fn with_directory<T: Send + 'static>(
    context: &ApiContext,
    work: impl FnOnce(&mut Store, &Directory) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = context.state.clone();
    let containers = context.containers.clone();
    tokio::task::spawn_blocking(move || {
        let running = containers.running();
        let mut store = state.store();
        let directory = directory(&store, running)?;
        work(&mut store, &directory)
    })
    .await
    .map_err(|error| ApiError::TaskFailed(error.to_string()))?
}

/// Remembered containers and running ones, merged by id, with the subjects that have profiles.
fn directory(store: &Store, running: Vec<RunningContainer>) -> Result<Directory, ApiError> {
    let mut containers: Vec<KnownContainer> = store
        .containers()?
        .into_iter()
        .map(|record| KnownContainer {
            id: record.id,
            name: record.name,
            image: record.image,
            compose_project: record.compose_project,
            compose_service: record.compose_service,
            running: false,
            last_seen_ms: record.last_seen_ms,
        })
        .collect();
    for live in running {
        match containers.iter_mut().find(|known| known.id == live.id) {
            Some(known) => {
                known.running = true;
                known.name = live.name;
            }
            None => containers.push(KnownContainer {
                id: live.id,
                name: live.name,
                image: live.image,
                compose_project: live.compose_project,
                compose_service: live.compose_service,
                running: true,
                last_seen_ms: 0,
            }),
        }
    }
    Ok(Directory::new(containers, &store.subjects()?))
}

/// The subject's recommendation; an empty one for a known subject that made no check yet.
fn recommendation_for(
    store: &Store,
    directory: &Directory,
    subject: &Subject,
) -> Result<Recommendation, ApiError> {
    let profile = match store.profile(subject)? {
        Some(profile) => profile,
        None => Profile {
            subject: subject.clone(),
            info: info_without_profile(directory, subject),
            entries: Vec::new(),
        },
    };
    Ok(recommend(&profile))
}

fn info_without_profile(directory: &Directory, subject: &Subject) -> SubjectInfo {
    match subject {
        Subject::Container { id } => match directory.container(id) {
            Some(container) => SubjectInfo {
                names: vec![container.name.clone()],
                images: vec![container.image.clone()],
                compose_project: container.compose_project.clone(),
                compose_service: container.compose_service.clone(),
                containers: vec![container.id.clone()],
                ..Default::default()
            },
            None => SubjectInfo::default(),
        },
        Subject::Service { project, service } => SubjectInfo {
            compose_project: Some(project.clone()),
            compose_service: Some(service.clone()),
            ..Default::default()
        },
        Subject::Image { name } => SubjectInfo {
            images: vec![name.clone()],
            ..Default::default()
        },
        Subject::Host => SubjectInfo::default(),
    }
}

fn query_from_proto(selector: Option<pb::ProfileSelector>) -> Result<Query, ApiError> {
    use pb::profile_selector::Selector;
    match selector.and_then(|selector| selector.selector) {
        Some(Selector::Query(text)) => Ok(Query::Text(text)),
        Some(Selector::ContainerId(id)) => Ok(Query::ContainerId(id)),
        Some(Selector::Service(service)) => {
            if service.project.is_empty() || service.service.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "a service selector needs both a project and a service name".into(),
                ));
            }
            Ok(Query::Service {
                project: service.project,
                service: service.service,
            })
        }
        Some(Selector::Image(name)) => Ok(Query::Image(name)),
        Some(Selector::Host(_)) => Ok(Query::Host),
        None => Err(ApiError::InvalidArgument(
            "no selector: say whose profile (a container, `project/service`, an image or the host)"
                .into(),
        )),
    }
}

/// What a watcher is told about by default: the advice, not the counts behind it.
fn advice(recommendation: &Recommendation) -> impl PartialEq + use<> {
    (
        recommendation
            .cap_add
            .iter()
            .map(|recommended| (recommended.capability, recommended.was_denied))
            .collect::<Vec<_>>(),
        recommendation.dangerous.clone(),
        recommendation.denied.clone(),
    )
}

/// Whether a watcher hears about `current` after `last`: when the advice changed, or with
/// `every_update` when anything did.
fn worth_sending(last: &Recommendation, current: &Recommendation, every_update: bool) -> bool {
    match every_update {
        true => last != current,
        false => advice(last) != advice(current),
    }
}

#[tonic::async_trait]
impl CapprofService for ApiService {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let status = self.context.state.status();
        let health = self.context.tracer_health.borrow().clone();
        let now_ms = crate::fold::Clock::now().wall_now_ms;
        let (tracer_health, tracer_problem) = match health {
            TracerHealth::Collecting => (pb::TracerHealth::Collecting, String::new()),
            TracerHealth::Stopped { reason } => (pb::TracerHealth::Stopped, reason),
            TracerHealth::KernelUnsupported { reason } => {
                (pb::TracerHealth::KernelUnsupported, reason)
            }
        };
        Ok(Response::new(pb::GetStatusResponse {
            version: status.version.to_owned(),
            attach_mode: status
                .attach
                .as_ref()
                .map_or(pb::AttachMode::Unspecified, |choice| {
                    convert::attach_mode_to_proto(choice.mode)
                })
                .into(),
            attach_explanation: status.attach.as_ref().map_or_else(
                || "none: the kernel offers no way to hook cap_capable".to_owned(),
                |choice| choice.explain(),
            ),
            skipped_modes: status
                .attach
                .iter()
                .flat_map(|choice| &choice.skipped)
                .map(|skipped| pb::SkippedAttachMode {
                    mode: convert::attach_mode_to_proto(skipped.mode).into(),
                    reason: skipped.reason.clone(),
                })
                .collect(),
            resumed: status.resumed,
            kernel: status.kernel,
            started_at_ms: status.started_at_ms,
            uptime_ms: u64::try_from(now_ms - status.started_at_ms).unwrap_or(0),
            counters: Some(convert::counters_to_proto(&status.counters)),
            last_poll_ms: status.last_poll_ms,
            pending_keys: status.pending_keys as u64,
            tracer_health: tracer_health.into(),
            tracer_problem,
        }))
    }

    async fn list_containers(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let running_only = request.into_inner().running_only;
        let containers = with_directory(&self.context, move |store, directory| {
            let mut known: Vec<&KnownContainer> = directory
                .containers()
                .iter()
                .filter(|container| !container.name.is_empty() || container.running)
                .filter(|container| container.running || !running_only)
                .collect();
            known.sort_by(|a, b| {
                (b.running, b.last_seen_ms, &a.name).cmp(&(a.running, a.last_seen_ms, &b.name))
            });
            let records: HashMap<String, _> = store
                .containers()?
                .into_iter()
                .map(|record| (record.id.clone(), record))
                .collect();
            let mut containers = Vec::with_capacity(known.len());
            for container in known {
                let subject = Subject::Container {
                    id: container.id.clone(),
                };
                let recommendation = recommendation_for(store, directory, &subject)?;
                let record = records.get(&container.id);
                containers.push(pb::Container {
                    id: container.id.clone(),
                    name: container.name.clone(),
                    image: container.image.clone(),
                    compose_project: container.compose_project.clone(),
                    compose_service: container.compose_service.clone(),
                    running: container.running,
                    first_seen_ms: record.map_or(0, |record| record.first_seen_ms),
                    last_seen_ms: record.map_or(0, |record| record.last_seen_ms),
                    exited_at_ms: record.and_then(|record| record.exited_at_ms),
                    total_checks: recommendation.total_checks,
                    cap_add: recommendation
                        .cap_add_names()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                });
            }
            Ok(containers)
        })
        .await?;
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let query = query_from_proto(request.into_inner().selector)?;
        let recommendation = with_directory(&self.context, move |store, directory| {
            let subject = directory.resolve(&query)?;
            recommendation_for(store, directory, &subject)
        })
        .await?;
        Ok(Response::new(pb::GetProfileResponse {
            recommendation: Some(convert::recommendation_to_proto(&recommendation)),
        }))
    }

    type WatchProfileStream = ResponseStream<pb::WatchProfileResponse>;

    async fn watch_profile(
        &self,
        request: Request<pb::WatchProfileRequest>,
    ) -> Result<Response<Self::WatchProfileStream>, Status> {
        let request = request.into_inner();
        let query = query_from_proto(request.selector)?;
        self.refuse_if_not_collecting()?;
        // Subscribed before the first read: a change between the two is seen, not lost.
        let changes = self.context.state.changes.subscribe();
        let subject =
            with_directory(&self.context, move |_, directory| directory.resolve(&query)).await?;
        debug!(%subject, "watch started");
        let watch = Watch {
            context: self.context.clone(),
            shutdown: self.shutdown.clone(),
            changes,
            subject,
            every_update: request.include_count_updates,
            last: None,
            finished: false,
        };
        let updates = stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        });
        Ok(Response::new(Box::pin(updates)))
    }

    type StreamChecksStream = ResponseStream<pb::StreamChecksResponse>;

    async fn stream_checks(
        &self,
        request: Request<pb::StreamChecksRequest>,
    ) -> Result<Response<Self::StreamChecksStream>, Status> {
        let request = request.into_inner();
        let capabilities = request
            .capabilities
            .iter()
            .map(|name| {
                name.parse::<Capability>()
                    .map_err(|error| ApiError::InvalidArgument(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let query = request
            .selector
            .map(|selector| query_from_proto(Some(selector)))
            .transpose()?;
        self.refuse_if_not_collecting()?;
        let checks = self.context.state.checks.subscribe();
        let (subject, containers) = with_directory(&self.context, move |_, directory| {
            let subject = query.map(|query| directory.resolve(&query)).transpose()?;
            Ok((subject, directory.containers().to_vec()))
        })
        .await?;
        let feed = CheckFeed {
            context: self.context.clone(),
            shutdown: self.shutdown.clone(),
            checks,
            subject,
            capabilities,
            containers: containers
                .into_iter()
                .map(|container| (container.id.clone(), container))
                .collect(),
            missed: 0,
            finished: false,
        };
        let events = stream::unfold(feed, |mut feed| async move {
            let item = feed.next().await?;
            Some((item, feed))
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn reset_profile(
        &self,
        request: Request<pb::ResetProfileRequest>,
    ) -> Result<Response<pb::ResetProfileResponse>, Status> {
        let query = query_from_proto(request.into_inner().selector)?;
        let (subject, existed) = with_directory(&self.context, move |store, directory| {
            let subject = directory.resolve(&query)?;
            let existed = store.reset(&subject)?;
            Ok((subject, existed))
        })
        .await?;
        // Watchers of this subject recompute and see the empty profile.
        self.context.state.announce_change(&subject);
        Ok(Response::new(pb::ResetProfileResponse {
            subject: Some(convert::subject_to_proto(&subject)),
            existed,
        }))
    }
}

/// Completes when the daemon starts shutting down; never if nobody can say so any more.
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) -> ApiError {
    let stopping = shutdown.wait_for(|stopping| *stopping).await.is_ok();
    match stopping {
        true => ApiError::ShuttingDown,
        false => std::future::pending().await,
    }
}

/// Completes when the tracer stops collecting; never if nobody can say so any more.
async fn stopped_collecting(health: &mut watch::Receiver<TracerHealth>) -> ApiError {
    let refusal = match health
        .wait_for(|health| *health != TracerHealth::Collecting)
        .await
    {
        Ok(health) => health.refusal(),
        Err(_) => None,
    };
    match refusal {
        Some(error) => error,
        None => std::future::pending().await,
    }
}

/// One `WatchProfile` stream.
struct Watch {
    context: ApiContext,
    shutdown: watch::Receiver<bool>,
    changes: broadcast::Receiver<ProfileChange>,
    subject: Subject,
    every_update: bool,
    last: Option<Recommendation>,
    finished: bool,
}

impl Watch {
    /// The next message: the current recommendation first, then each change, then an error
    /// when the daemon stops or stops collecting.
    async fn next(&mut self) -> Option<Result<pb::WatchProfileResponse, Status>> {
        if self.finished {
            return None;
        }
        loop {
            if self.last.is_some() {
                let refusal = tokio::select! {
                    error = shutting_down(&mut self.shutdown) => Some(error),
                    error = stopped_collecting(&mut self.context.tracer_health) => Some(error),
                    change = self.changes.recv() => match change {
                        Ok(change) if change.subject != self.subject => continue,
                        // Lagged: whatever was missed may have been ours; look.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => Some(ApiError::ShuttingDown),
                    },
                };
                if let Some(error) = refusal {
                    self.finished = true;
                    return Some(Err(error.into()));
                }
            }
            let subject = self.subject.clone();
            let current = match with_directory(&self.context, move |store, directory| {
                recommendation_for(store, directory, &subject)
            })
            .await
            {
                Ok(current) => current,
                Err(error) => {
                    self.finished = true;
                    return Some(Err(error.into()));
                }
            };
            let changed = match &self.last {
                None => true,
                Some(last) => worth_sending(last, &current, self.every_update),
            };
            if changed {
                let message = pb::WatchProfileResponse {
                    recommendation: Some(convert::recommendation_to_proto(&current)),
                };
                self.last = Some(current);
                return Some(Ok(message));
            }
            self.last = Some(current);
        }
    }
}

/// One `StreamChecks` stream.
struct CheckFeed {
    context: ApiContext,
    shutdown: watch::Receiver<bool>,
    checks: broadcast::Receiver<LiveCheck>,
    subject: Option<Subject>,
    capabilities: Vec<Capability>,
    /// Container id → what is known about it, refreshed when an unknown id shows up.
    containers: HashMap<String, KnownContainer>,
    missed: u64,
    finished: bool,
}

impl CheckFeed {
    async fn next(&mut self) -> Option<Result<pb::StreamChecksResponse, Status>> {
        if self.finished {
            return None;
        }
        loop {
            let check = tokio::select! {
                error = shutting_down(&mut self.shutdown) => Err(error),
                error = stopped_collecting(&mut self.context.tracer_health) => Err(error),
                check = self.checks.recv() => match check {
                    Ok(check) => Ok(check),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        self.missed += skipped;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(ApiError::ShuttingDown),
                },
            };
            let check = match check {
                Ok(check) => check,
                Err(error) => {
                    self.finished = true;
                    return Some(Err(error.into()));
                }
            };
            if !self.capabilities.is_empty()
                && !check
                    .key
                    .capability()
                    .is_some_and(|cap| self.capabilities.contains(&cap))
            {
                continue;
            }
            let container = match &check.subject {
                Subject::Container { id } => match self.container(id).await {
                    Ok(container) => container,
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error.into()));
                    }
                },
                _ => None,
            };
            if !self.wanted(&check.subject, container.as_ref()) {
                continue;
            }
            let name = container
                .map(|container| container.name)
                .unwrap_or_default();
            let message = pb::StreamChecksResponse {
                check: Some(convert::live_check_to_proto(&check, name)),
                missed: std::mem::take(&mut self.missed),
            };
            return Some(Ok(message));
        }
    }

    async fn container(&mut self, id: &str) -> Result<Option<KnownContainer>, ApiError> {
        if !self.containers.contains_key(id) {
            let containers = with_directory(&self.context, |_, directory| {
                Ok(directory.containers().to_vec())
            })
            .await?;
            self.containers.extend(
                containers
                    .into_iter()
                    .map(|container| (container.id.clone(), container)),
            );
        }
        Ok(self.containers.get(id).cloned())
    }

    fn wanted(&self, checked: &Subject, container: Option<&KnownContainer>) -> bool {
        match (&self.subject, container) {
            (None, _) => true,
            (Some(Subject::Host), _) => *checked == Subject::Host,
            (Some(wanted @ Subject::Container { .. }), _) => checked == wanted,
            (Some(Subject::Service { project, service }), Some(container)) => {
                container.compose_project.as_ref() == Some(project)
                    && container.compose_service.as_ref() == Some(service)
            }
            (Some(Subject::Image { name }), Some(container)) => container.image == *name,
            (Some(Subject::Service { .. } | Subject::Image { .. }), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::EntryVerdict;
    use crate::test_support::check;

    fn recommendation(entries: &[(Capability, EntryVerdict, u32, u64)]) -> Recommendation {
        recommend(&Profile {
            subject: Subject::Host,
            info: SubjectInfo::default(),
            entries: entries
                .iter()
                .map(|&(cap, verdict, syscall, count)| {
                    check(cap, verdict, syscall, &["cap_capable", "__inet_bind+0x1"])
                        .by("httpd")
                        .count(count)
                        .entry()
                })
                .collect(),
        })
    }

    #[test]
    fn live_streams_end_on_signals_not_on_dropped_senders() {
        use futures_util::FutureExt;
        let (health, mut receiver) = watch::channel(TracerHealth::Collecting);
        assert!(stopped_collecting(&mut receiver).now_or_never().is_none());
        health.send_replace(TracerHealth::KernelUnsupported {
            reason: "no hook".into(),
        });
        assert!(matches!(
            stopped_collecting(&mut receiver).now_or_never(),
            Some(ApiError::KernelUnsupported { .. })
        ));
        let (_, mut orphaned) = watch::channel(TracerHealth::Collecting);
        assert!(
            stopped_collecting(&mut orphaned).now_or_never().is_none(),
            "a daemon that never reports health keeps its streams"
        );
        let (stop, mut stopping) = watch::channel(false);
        assert!(shutting_down(&mut stopping).now_or_never().is_none());
        stop.send_replace(true);
        assert!(matches!(
            shutting_down(&mut stopping).now_or_never(),
            Some(ApiError::ShuttingDown)
        ));
        let (_, mut orphaned) = watch::channel(false);
        assert!(shutting_down(&mut orphaned).now_or_never().is_none());
    }

    #[test]
    fn watchers_hear_about_advice_unless_they_ask_for_counts() {
        use Capability::{NetBindService, NetRaw};
        use EntryVerdict::{Denied, Granted};
        let before = recommendation(&[(NetBindService, Granted, 49, 3)]);
        let more = recommendation(&[(NetBindService, Granted, 49, 9)]);
        let new_capability =
            recommendation(&[(NetBindService, Granted, 49, 3), (NetRaw, Denied, 41, 1)]);
        assert!(!worth_sending(&before, &more, false), "counts alone");
        assert!(
            worth_sending(&before, &more, true),
            "counts, when asked for"
        );
        assert!(worth_sending(&before, &new_capability, false));
        assert!(!worth_sending(&before, &before.clone(), true));
        let now_denied = recommendation(&[(NetBindService, Denied, 49, 3)]);
        assert!(
            worth_sending(&before, &now_denied, false),
            "granted → denied"
        );
    }
}
