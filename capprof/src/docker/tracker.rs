//! Keeps cgroup id → container current while containers come and go and the engine restarts.
//!
//! The tracker lists the running containers when it connects, then follows the engine's start,
//! die and destroy events. Containers are never forgotten while checks may still arrive for them:
//! a container that exited keeps its cgroup ids, and a removed one is remembered (up to
//! [`TrackerOptions::removed_capacity`]) so that late data is still attributed. A restart gives a
//! container a new cgroup; both ids map to the one container.
//!
//! When the event stream ends or fails (the engine stopped), the tracker reconnects with
//! exponential backoff, lists again and marks what stopped meanwhile. [`ConnectionState`] shows
//! where it is.
//!
//! A check may come from a cgroup the tracker has not seen yet (runc's setup checks come before
//! the start event). [`ContainerTracker::resolve`] then asks the kernel for the cgroup's path and
//! the engine for the container it names; until that succeeds the answer is
//! [`Attribution::Unknown`], the caller keeps the checks, and the tracker retries by itself and
//! announces [`TrackerEvent::Attributed`]. Cgroups that name no container are the host's.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::{
    sync::{Notify, broadcast, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{
    cgroups::{CgroupLayout, CgroupLocator, CgroupOwner, HostCgroups, cgroup_owner},
    container::ContainerInfo,
    engine::{ContainerAction, ContainerEngine, ContainerEvent, Engine, EngineError, EngineInfo},
};

/// The tracker over the real engine and host.
pub type DockerTracker = ContainerTracker<Engine, HostCgroups>;

/// Tuning; the defaults suit a daemon.
#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// The first wait before reconnecting; it doubles up to `max_reconnect_delay`.
    pub reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// How long a cgroup that vanished before anyone learnt its path stays
    /// [`Attribution::Unknown`] (an event being processed may still name it) before it counts
    /// as the host's.
    pub vanished_grace: Duration,
    /// How often unknown cgroups are tried again while some are waiting.
    pub pending_retry_interval: Duration,
    /// How many removed containers are remembered for late data.
    pub removed_capacity: usize,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            reconnect_delay: Duration::from_millis(200),
            max_reconnect_delay: Duration::from_secs(10),
            vanished_grace: Duration::from_secs(5),
            pending_retry_interval: Duration::from_secs(1),
            removed_capacity: 4096,
        }
    }
}

/// Where the tracker's link to the engine is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionState {
    /// Asking the engine for its state; `attempt` counts since the last successful connection.
    Connecting { attempt: u32 },
    /// Following events. `relists` counts the successful listings so far, one per connection.
    Connected { engine: EngineInfo, relists: u64 },
    /// The engine cannot be reached; the next attempt comes after `retry_in`.
    Disconnected {
        reason: String,
        attempt: u32,
        retry_in: Duration,
    },
}

/// Where a container is in its life, as far as the tracker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Running,
    Exited,
    /// Removed from the engine; remembered for late data.
    Removed,
}

/// A container and every cgroup id it has had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackedContainer {
    pub info: Arc<ContainerInfo>,
    pub lifecycle: Lifecycle,
    /// Oldest first; a restart adds one.
    pub cgroup_ids: Vec<u64>,
}

/// Whose a cgroup's checks are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Attribution {
    Container(Arc<ContainerInfo>),
    /// No container of this engine: the host, or another engine's container.
    Host,
    /// Not known yet: keep the checks and ask again, or wait for [`TrackerEvent::Attributed`].
    Unknown(PendingCgroup),
}

/// A cgroup id waiting to be attributed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingCgroup {
    pub cgroup_id: u64,
    pub reason: PendingReason,
    /// When the tracker was first asked about it.
    #[serde(skip)]
    pub first_seen: Instant,
}

/// Why a cgroup is not attributed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum PendingReason {
    /// Only looked up in the tracker's map so far ([`ContainerTracker::attribute`]).
    NotResolvedYet,
    /// The cgroup no longer exists and no container is known to have had it.
    CgroupGone,
    /// The cgroup's path names a container, and the engine cannot be asked about it.
    EngineUnavailable,
    /// The cgroup's path could not be read.
    LookupFailed(String),
}

/// What the tracker saw happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrackerEvent {
    /// Connected and listed: `relists` as in [`ConnectionState::Connected`], `running` the
    /// number of running containers found.
    Listed {
        relists: u64,
        running: usize,
    },
    Disconnected {
        reason: String,
    },
    Started(TrackedContainer),
    Exited(TrackedContainer),
    Removed(TrackedContainer),
    /// A cgroup that was [`Attribution::Unknown`] got its answer.
    Attributed {
        cgroup_id: u64,
        attribution: Attribution,
    },
}

/// Follows one engine; see the module documentation. Stops following when dropped.
#[derive(Debug)]
pub struct ContainerTracker<E, C> {
    shared: Arc<Shared<E, C>>,
    follower: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared<E, C> {
    engine: E,
    cgroups: C,
    options: TrackerOptions,
    directory: Mutex<Directory>,
    engine_info: RwLock<Option<EngineInfo>>,
    connection: watch::Sender<ConnectionState>,
    events: broadcast::Sender<TrackerEvent>,
    /// Wakes the follower when a cgroup starts waiting, so that it retries it.
    pending_added: Notify,
}

const EVENT_CAPACITY: usize = 1024;

/// How far before a (re)subscription the engine is asked to replay events, so that none falls
/// between the listing and the subscription. The engine's clock is the host's.
const EVENT_REPLAY: Duration = Duration::from_secs(1);

impl<E: ContainerEngine, C: CgroupLocator> ContainerTracker<E, C> {
    /// Starts following `engine` on the current tokio runtime.
    pub fn spawn(engine: E, cgroups: C, options: TrackerOptions) -> Self {
        let (connection, _) = watch::channel(ConnectionState::Connecting { attempt: 1 });
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            engine,
            cgroups,
            directory: Mutex::new(Directory::new(options.removed_capacity)),
            options,
            engine_info: RwLock::new(None),
            connection,
            events,
            pending_added: Notify::new(),
        });
        let follower = tokio::spawn(Arc::clone(&shared).follow());
        Self { shared, follower }
    }

    pub fn connection(&self) -> ConnectionState {
        self.shared.connection.borrow().clone()
    }

    pub fn watch_connection(&self) -> watch::Receiver<ConnectionState> {
        self.shared.connection.subscribe()
    }

    /// Events from now on. A receiver that falls more than 1024 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<TrackerEvent> {
        self.shared.events.subscribe()
    }

    /// The answer from what the tracker already knows, without I/O. An unknown cgroup is
    /// remembered and retried in the background.
    pub fn attribute(&self, cgroup_id: u64) -> Attribution {
        let known = self.shared.directory().lookup(cgroup_id);
        known.unwrap_or_else(|| {
            Attribution::Unknown(self.shared.note_pending(
                cgroup_id,
                PendingReason::NotResolvedYet,
                Instant::now(),
            ))
        })
    }

    /// The best answer now: looks the cgroup up in the kernel and the container in the engine
    /// when the tracker does not know it. Call it when a cgroup is first seen, while the cgroup
    /// still exists.
    pub async fn resolve(&self, cgroup_id: u64) -> Attribution {
        self.shared.resolve(cgroup_id).await
    }

    /// A container by id, unique id prefix or name.
    pub fn container(&self, id_or_name: &str) -> Option<TrackedContainer> {
        self.shared.directory().find(id_or_name)
    }

    pub fn containers(&self) -> Vec<TrackedContainer> {
        self.shared
            .directory()
            .containers
            .values()
            .cloned()
            .collect()
    }

    /// The cgroups waiting for an answer.
    pub fn pending(&self) -> Vec<PendingCgroup> {
        self.shared.directory().pending.values().cloned().collect()
    }
}

impl<E, C> Drop for ContainerTracker<E, C> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Why a connection ended.
struct Disconnect {
    reason: String,
    was_connected: bool,
}

impl Disconnect {
    fn before_connected(error: &EngineError) -> Self {
        Self {
            reason: error.to_string(),
            was_connected: false,
        }
    }

    fn after_connected(reason: String) -> Self {
        Self {
            reason,
            was_connected: true,
        }
    }
}

impl<E: ContainerEngine, C: CgroupLocator> Shared<E, C> {
    fn directory(&self) -> MutexGuard<'_, Directory> {
        // A panic while holding the lock leaves a consistent map (every update is one insert).
        self.directory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn layout(&self) -> CgroupLayout {
        self.engine_info
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|info| info.cgroup_layout)
            .unwrap_or_default()
    }

    fn emit(&self, event: TrackerEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    fn note_pending(&self, cgroup_id: u64, reason: PendingReason, now: Instant) -> PendingCgroup {
        let pending = self.directory().note_pending(cgroup_id, reason, now);
        self.pending_added.notify_one();
        pending
    }

    /// Announces the cgroups that stopped waiting since the last call.
    fn announce_attributed(&self) {
        let settled: Vec<(u64, Attribution)> = {
            let mut directory = self.directory();
            let ids = std::mem::take(&mut directory.newly_attributed);
            ids.into_iter()
                .filter_map(|cgroup_id| Some((cgroup_id, directory.lookup(cgroup_id)?)))
                .collect()
        };
        for (cgroup_id, attribution) in settled {
            self.emit(TrackerEvent::Attributed {
                cgroup_id,
                attribution,
            });
        }
    }

    async fn follow(self: Arc<Self>) {
        let mut delay = self.options.reconnect_delay;
        let mut attempt = 1;
        let mut relists = 0;
        loop {
            self.connection
                .send_replace(ConnectionState::Connecting { attempt });
            let disconnect = self.session(&mut relists).await;
            if disconnect.was_connected {
                delay = self.options.reconnect_delay;
                attempt = 1;
            }
            tracing::warn!(reason = %disconnect.reason, retry_in = ?delay, "lost the Docker engine");
            self.connection.send_replace(ConnectionState::Disconnected {
                reason: disconnect.reason.clone(),
                attempt,
                retry_in: delay,
            });
            self.emit(TrackerEvent::Disconnected {
                reason: disconnect.reason,
            });
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.options.max_reconnect_delay);
            attempt += 1;
        }
    }

    /// One connection: list, then follow events until the stream ends or fails.
    async fn session(&self, relists: &mut u64) -> Disconnect {
        let info = match self.engine.engine_info().await {
            Ok(info) => info,
            Err(error) => return Disconnect::before_connected(&error),
        };
        *self
            .engine_info
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(info.clone());
        // Subscribe before listing, a little in the past: the engine replays what happens in
        // between, and what happened during an outage is what the listing finds.
        let now = SystemTime::now();
        let mut events = self
            .engine
            .container_events(now.checked_sub(EVENT_REPLAY).unwrap_or(now));
        let running = match self.relist().await {
            Ok(running) => running,
            Err(error) => return Disconnect::before_connected(&error),
        };
        *relists += 1;
        self.connection.send_replace(ConnectionState::Connected {
            engine: info,
            relists: *relists,
        });
        self.emit(TrackerEvent::Listed {
            relists: *relists,
            running,
        });
        tracing::info!(running, relists = *relists, "following the Docker engine");
        loop {
            let has_pending = !self.directory().pending.is_empty();
            tokio::select! {
                next = events.next() => match next {
                    Some(Ok(event)) => {
                        if let Err(error) = self.apply(event).await {
                            return Disconnect::after_connected(error.to_string());
                        }
                    }
                    Some(Err(error)) => return Disconnect::after_connected(error.to_string()),
                    None => {
                        return Disconnect::after_connected("the engine closed the event stream".to_owned());
                    }
                },
                () = tokio::time::sleep(self.options.pending_retry_interval), if has_pending => {
                    self.retry_pending().await;
                }
                // Only to re-evaluate `has_pending`.
                () = self.pending_added.notified(), if !has_pending => {}
            }
        }
    }

    /// Brings the map in line with the engine's list; returns how many containers run.
    async fn relist(&self) -> Result<usize, EngineError> {
        let running_ids = self.engine.running_container_ids().await?;
        let mut found = 0;
        for id in &running_ids {
            // A container may go between the listing and the inspection.
            if let Some(info) = self.engine.inspect(id).await? {
                found += 1;
                self.record_inspection(info);
            }
        }
        let listed: HashSet<&str> = running_ids.iter().map(String::as_str).collect();
        let stopped_meanwhile: Vec<String> = self
            .directory()
            .containers
            .values()
            .filter(|tracked| {
                tracked.lifecycle == Lifecycle::Running
                    && !listed.contains(tracked.info.id.as_str())
            })
            .map(|tracked| tracked.info.id.clone())
            .collect();
        for id in stopped_meanwhile {
            match self.engine.inspect(&id).await? {
                Some(info) => self.record_inspection(info),
                None => {
                    let removed = self.directory().mark_removed(&id, None);
                    self.emit(TrackerEvent::Removed(removed));
                }
            }
        }
        self.retry_pending().await;
        Ok(found)
    }

    async fn apply(&self, event: ContainerEvent) -> Result<(), EngineError> {
        let id = event.container_id.as_str();
        match event.action {
            ContainerAction::Start => match self.engine.inspect(id).await? {
                Some(info) => {
                    self.record_inspection(info);
                    self.retry_pending().await;
                }
                None => {
                    // Removed before we could ask: the event is all there is.
                    let fallback = ContainerInfo::from_event_attributes(id, &event.attributes);
                    let tracked = self.directory().mark_exited(id, Some(fallback));
                    self.emit(TrackerEvent::Exited(tracked));
                }
            },
            ContainerAction::Die => {
                let fallback = ContainerInfo::from_event_attributes(id, &event.attributes);
                let tracked = self.directory().mark_exited(id, Some(fallback));
                self.emit(TrackerEvent::Exited(tracked));
            }
            ContainerAction::Destroy => {
                let fallback = ContainerInfo::from_event_attributes(id, &event.attributes);
                let tracked = self.directory().mark_removed(id, Some(fallback));
                self.emit(TrackerEvent::Removed(tracked));
            }
        }
        Ok(())
    }

    /// Records what an inspection said, with the container's cgroup located.
    fn record_inspection(&self, mut info: ContainerInfo) {
        self.locate_cgroup(&mut info);
        let (tracked, transition) = self.directory().record(info);
        match transition {
            Some(Lifecycle::Running) => self.emit(TrackerEvent::Started(tracked)),
            Some(Lifecycle::Exited) => self.emit(TrackerEvent::Exited(tracked)),
            Some(Lifecycle::Removed) | None => {}
        }
        self.announce_attributed();
    }

    /// Fills in the container's cgroup: from its init's `/proc/<pid>/cgroup` while it runs, else
    /// from where the engine's layout puts it.
    fn locate_cgroup(&self, info: &mut ContainerInfo) {
        if let Some(pid) = info.pid {
            match self.cgroups.of_pid(pid) {
                // The pid may already belong to another process: only trust a cgroup that names
                // this container.
                Ok(location)
                    if owner_id(&location.relative_path).as_deref() == Some(info.id.as_str()) =>
                {
                    info.cgroup_id = Some(location.id);
                    info.cgroup_path = Some(location.directory);
                    return;
                }
                Ok(location) => {
                    tracing::debug!(container = %info.id, pid, path = %location.relative_path, "the container's pid is in another cgroup");
                }
                Err(error) => {
                    tracing::debug!(container = %info.id, pid, %error, "cannot read the container's cgroup from its pid")
                }
            }
        }
        for candidate in self
            .layout()
            .candidate_paths(&info.id, info.cgroup_parent.as_deref())
        {
            match self.cgroups.of_relative_path(&candidate) {
                Ok(Some(location)) => {
                    info.cgroup_id = Some(location.id);
                    info.cgroup_path = Some(location.directory);
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(container = %info.id, %candidate, %error, "cannot read a candidate cgroup")
                }
            }
        }
    }

    async fn resolve(&self, cgroup_id: u64) -> Attribution {
        let attribution = self.resolve_quietly(cgroup_id).await;
        self.announce_attributed();
        attribution
    }

    async fn resolve_quietly(&self, cgroup_id: u64) -> Attribution {
        if let Some(known) = self.directory().lookup(cgroup_id) {
            return known;
        }
        let now = Instant::now();
        let relative_path = match self.cgroups.relative_path_of_id(cgroup_id) {
            Ok(Some(path)) => path,
            Ok(None) => return self.vanished(cgroup_id, now),
            Err(error) => {
                let reason = PendingReason::LookupFailed(error.to_string());
                return Attribution::Unknown(self.note_pending(cgroup_id, reason, now));
            }
        };
        let (container_id, docker_layout) = match cgroup_owner(&relative_path) {
            CgroupOwner::NotAContainer => return self.directory().settle_host(cgroup_id),
            CgroupOwner::DockerContainer(id) => (id, true),
            CgroupOwner::MaybeContainer(id) => (id, false),
        };
        if let Some(attribution) = self.directory().map_cgroup(&container_id, cgroup_id) {
            return attribution;
        }
        match self.engine.inspect(&container_id).await {
            Ok(Some(info)) => {
                self.record_inspection(info);
                self.directory()
                    .map_cgroup(&container_id, cgroup_id)
                    .unwrap_or(Attribution::Host)
            }
            // Docker's layout without Docker knowing the container: it was removed before the
            // tracker heard of it. Its checks are still a container's.
            Ok(None) if docker_layout => {
                self.directory()
                    .adopt(&container_id, cgroup_id, Lifecycle::Removed)
            }
            Ok(None) => self.directory().settle_host(cgroup_id),
            Err(error) if docker_layout => {
                tracing::debug!(%container_id, %error, "the engine cannot describe the container yet");
                // Its cgroup exists, so something runs there; the next listing tells more.
                self.directory()
                    .adopt(&container_id, cgroup_id, Lifecycle::Running)
            }
            Err(_) => Attribution::Unknown(self.note_pending(
                cgroup_id,
                PendingReason::EngineUnavailable,
                now,
            )),
        }
    }

    fn vanished(&self, cgroup_id: u64, now: Instant) -> Attribution {
        let pending = self.note_pending(cgroup_id, PendingReason::CgroupGone, now);
        if now.duration_since(pending.first_seen) >= self.options.vanished_grace {
            self.directory().settle_host(cgroup_id)
        } else {
            Attribution::Unknown(pending)
        }
    }

    /// Tries every waiting cgroup again; the ones that get an answer are announced.
    async fn retry_pending(&self) {
        let waiting: Vec<u64> = self.directory().pending.keys().copied().collect();
        for cgroup_id in waiting {
            self.resolve(cgroup_id).await;
        }
    }
}

/// The container id a cgroup path names, if any.
fn owner_id(relative_path: &str) -> Option<String> {
    match cgroup_owner(relative_path) {
        CgroupOwner::DockerContainer(id) | CgroupOwner::MaybeContainer(id) => Some(id),
        CgroupOwner::NotAContainer => None,
    }
}

/// The map itself: no I/O, no async.
#[derive(Debug)]
struct Directory {
    containers: HashMap<String, TrackedContainer>,
    by_cgroup: HashMap<u64, String>,
    host: HashSet<u64>,
    pending: HashMap<u64, PendingCgroup>,
    /// Removed containers, oldest first, for eviction.
    removed: VecDeque<String>,
    removed_capacity: usize,
    /// Cgroups that stopped waiting, to be announced.
    newly_attributed: Vec<u64>,
}

impl Directory {
    fn new(removed_capacity: usize) -> Self {
        Self {
            containers: HashMap::new(),
            by_cgroup: HashMap::new(),
            host: HashSet::new(),
            pending: HashMap::new(),
            removed: VecDeque::new(),
            removed_capacity,
            newly_attributed: Vec::new(),
        }
    }

    fn stop_waiting(&mut self, cgroup_id: u64) {
        if self.pending.remove(&cgroup_id).is_some() {
            self.newly_attributed.push(cgroup_id);
        }
    }

    fn lookup(&self, cgroup_id: u64) -> Option<Attribution> {
        if let Some(container_id) = self.by_cgroup.get(&cgroup_id) {
            let tracked = self.containers.get(container_id)?;
            return Some(Attribution::Container(Arc::clone(&tracked.info)));
        }
        self.host.contains(&cgroup_id).then_some(Attribution::Host)
    }

    fn find(&self, id_or_name: &str) -> Option<TrackedContainer> {
        if let Some(tracked) = self.containers.get(id_or_name) {
            return Some(tracked.clone());
        }
        let mut by_prefix = self.containers.values().filter(|tracked| {
            tracked.info.name == id_or_name || tracked.info.id.starts_with(id_or_name)
        });
        let first = by_prefix.next()?;
        by_prefix.next().is_none().then(|| first.clone())
    }

    fn note_pending(
        &mut self,
        cgroup_id: u64,
        reason: PendingReason,
        now: Instant,
    ) -> PendingCgroup {
        let pending = self
            .pending
            .entry(cgroup_id)
            .or_insert_with(|| PendingCgroup {
                cgroup_id,
                reason: reason.clone(),
                first_seen: now,
            });
        pending.reason = reason;
        pending.clone()
    }

    fn settle_host(&mut self, cgroup_id: u64) -> Attribution {
        self.stop_waiting(cgroup_id);
        self.host.insert(cgroup_id);
        Attribution::Host
    }

    /// Maps a cgroup to a known container; `None` when the container is not known.
    fn map_cgroup(&mut self, container_id: &str, cgroup_id: u64) -> Option<Attribution> {
        let tracked = self.containers.get_mut(container_id)?;
        if !tracked.cgroup_ids.contains(&cgroup_id) {
            tracked.cgroup_ids.push(cgroup_id);
        }
        let info = Arc::clone(&tracked.info);
        self.by_cgroup.insert(cgroup_id, container_id.to_owned());
        self.stop_waiting(cgroup_id);
        self.host.remove(&cgroup_id);
        Some(Attribution::Container(info))
    }

    /// A container known only from its cgroup's path.
    fn adopt(&mut self, container_id: &str, cgroup_id: u64, lifecycle: Lifecycle) -> Attribution {
        if lifecycle == Lifecycle::Removed {
            self.mark_removed(container_id, None);
        } else {
            self.containers
                .entry(container_id.to_owned())
                .or_insert_with(|| TrackedContainer {
                    info: Arc::new(ContainerInfo::from_event_attributes(
                        container_id,
                        &Default::default(),
                    )),
                    lifecycle,
                    cgroup_ids: Vec::new(),
                });
        }
        self.map_cgroup(container_id, cgroup_id)
            .unwrap_or(Attribution::Host)
    }

    /// Records an inspection; returns the container and its new lifecycle if it changed.
    fn record(&mut self, mut info: ContainerInfo) -> (TrackedContainer, Option<Lifecycle>) {
        let lifecycle = if info.running {
            Lifecycle::Running
        } else {
            Lifecycle::Exited
        };
        let id = info.id.clone();
        let previous = self.containers.get(&id);
        // An inspection of an exited container finds no pid; keep the cgroup it had.
        if info.cgroup_id.is_none()
            && let Some(previous) = previous
            && previous.info.started_at == info.started_at
        {
            info.cgroup_id = previous.info.cgroup_id;
            info.cgroup_path = previous.info.cgroup_path.clone();
        }
        let mut cgroup_ids = previous
            .map(|tracked| tracked.cgroup_ids.clone())
            .unwrap_or_default();
        let changed = previous.is_none_or(|tracked| tracked.lifecycle != lifecycle);
        if let Some(cgroup_id) = info.cgroup_id {
            if !cgroup_ids.contains(&cgroup_id) {
                cgroup_ids.push(cgroup_id);
            }
            self.by_cgroup.insert(cgroup_id, id.clone());
            self.stop_waiting(cgroup_id);
            self.host.remove(&cgroup_id);
        }
        let tracked = TrackedContainer {
            info: Arc::new(info),
            lifecycle,
            cgroup_ids,
        };
        self.containers.insert(id, tracked.clone());
        (tracked, changed.then_some(lifecycle))
    }

    fn mark_exited(
        &mut self,
        container_id: &str,
        fallback: Option<ContainerInfo>,
    ) -> TrackedContainer {
        self.transition(container_id, fallback, Lifecycle::Exited)
    }

    fn mark_removed(
        &mut self,
        container_id: &str,
        fallback: Option<ContainerInfo>,
    ) -> TrackedContainer {
        let tracked = self.transition(container_id, fallback, Lifecycle::Removed);
        if !self.removed.iter().any(|removed| removed == container_id) {
            self.removed.push_back(container_id.to_owned());
        }
        while self.removed.len() > self.removed_capacity {
            let Some(evicted) = self.removed.pop_front() else {
                break;
            };
            if let Some(forgotten) = self.containers.remove(&evicted) {
                for cgroup_id in forgotten.cgroup_ids {
                    self.by_cgroup.remove(&cgroup_id);
                }
            }
        }
        tracked
    }

    fn transition(
        &mut self,
        container_id: &str,
        fallback: Option<ContainerInfo>,
        lifecycle: Lifecycle,
    ) -> TrackedContainer {
        let tracked = self
            .containers
            .entry(container_id.to_owned())
            .or_insert_with(|| TrackedContainer {
                info: Arc::new(fallback.unwrap_or_else(|| {
                    ContainerInfo::from_event_attributes(container_id, &Default::default())
                })),
                lifecycle,
                cgroup_ids: Vec::new(),
            });
        // Removal is final; a late "die" does not bring a removed container back.
        if tracked.lifecycle != Lifecycle::Removed {
            tracked.lifecycle = lifecycle;
        }
        if tracked.info.running || tracked.info.pid.is_some() {
            let info = Arc::make_mut(&mut tracked.info);
            info.running = false;
            info.pid = None;
        }
        tracked.clone()
    }
}

#[cfg(test)]
mod tests;
