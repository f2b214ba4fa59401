//! The tracker against a fake engine and a fake cgroup hierarchy. Time is paused: backoff and
//! retry sleeps pass instantly, and a hang fails at the guard instead of blocking.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures_util::{StreamExt, stream::BoxStream};
use tokio::sync::{broadcast, mpsc};

use super::*;
use crate::{
    cgroup::CgroupError,
    docker::{
        cgroups::{CgroupDriver, CgroupLocation, CgroupVersion},
        container::COMPOSE_SERVICE_LABEL,
    },
};

const HANG_GUARD: Duration = Duration::from_secs(600);

fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn info(n: u8, pid: Option<u32>) -> ContainerInfo {
    let id = container_id(n);
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_owned(), format!("app-{n}"));
    attributes.insert("image".to_owned(), "busybox".to_owned());
    let mut info = ContainerInfo::from_event_attributes(&id, &attributes);
    info.pid = pid;
    info.running = pid.is_some();
    info.started_at = Some(format!("2026-12-03T16:49:{n:02}Z"));
    info
}

#[derive(Default)]
struct EngineState {
    up: bool,
    containers: HashMap<String, ContainerInfo>,
    subscribers: Vec<mpsc::UnboundedSender<Result<ContainerEvent, EngineError>>>,
    subscriptions: usize,
    driver: Option<CgroupDriver>,
}

#[derive(Clone, Default)]
struct FakeEngine(Arc<Mutex<EngineState>>);

fn engine_down() -> EngineError {
    EngineError::Api {
        operation: "fake",
        source: bollard::errors::Error::IOError {
            err: io::Error::from(io::ErrorKind::ConnectionRefused),
        },
    }
}

impl FakeEngine {
    fn up(driver: CgroupDriver) -> Self {
        let engine = Self::default();
        {
            let mut state = engine.0.lock().unwrap();
            state.up = true;
            state.driver = Some(driver);
        }
        engine
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.0.lock().unwrap()
    }

    fn put(&self, info: ContainerInfo) {
        self.state().containers.insert(info.id.clone(), info);
    }

    fn forget(&self, id: &str) {
        self.state().containers.remove(id);
    }

    /// Sends an event to every open subscription.
    fn send(&self, action: ContainerAction, id: &str, attributes: &[(&str, &str)]) {
        let event = ContainerEvent {
            action,
            container_id: id.to_owned(),
            attributes: attributes
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        };
        self.state()
            .subscribers
            .retain(|subscriber| subscriber.send(Ok(event.clone())).is_ok());
    }

    /// The engine stops: open streams end and requests fail.
    fn stop(&self) {
        let mut state = self.state();
        state.up = false;
        state.subscribers.clear();
        for info in state.containers.values_mut() {
            info.running = false;
            info.pid = None;
        }
    }

    fn start(&self) {
        self.state().up = true;
    }

    fn subscriptions(&self) -> usize {
        self.state().subscriptions
    }
}

impl ContainerEngine for FakeEngine {
    async fn engine_info(&self) -> Result<EngineInfo, EngineError> {
        let state = self.state();
        if !state.up {
            return Err(engine_down());
        }
        Ok(EngineInfo {
            server_version: "20.10.24".into(),
            api_version: "1.41".into(),
            cgroup_layout: CgroupLayout {
                driver: state.driver,
                version: Some(CgroupVersion::V1),
            },
        })
    }

    async fn running_container_ids(&self) -> Result<Vec<String>, EngineError> {
        let state = self.state();
        if !state.up {
            return Err(engine_down());
        }
        let mut ids: Vec<String> = state
            .containers
            .values()
            .filter(|info| info.running)
            .map(|info| info.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let state = self.state();
        if !state.up {
            return Err(engine_down());
        }
        Ok(state.containers.get(id).cloned())
    }

    fn container_events(
        &self,
        _since: SystemTime,
    ) -> BoxStream<'static, Result<ContainerEvent, EngineError>> {
        let mut state = self.state();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        if state.up {
            state.subscriptions += 1;
            state.subscribers.push(sender);
        } else {
            let _ = sender.send(Err(engine_down()));
        }
        futures_util::stream::poll_fn(move |context| receiver.poll_recv(context)).boxed()
    }
}

/// A v2 hierarchy: paths with their ids, and which cgroup each pid is in.
#[derive(Clone, Default)]
struct FakeCgroups(Arc<Mutex<CgroupState>>);

#[derive(Default)]
struct CgroupState {
    ids: HashMap<String, u64>,
    pids: HashMap<u32, String>,
}

impl FakeCgroups {
    fn add(&self, relative_path: &str, id: u64) {
        self.0
            .lock()
            .unwrap()
            .ids
            .insert(relative_path.to_owned(), id);
    }

    fn remove(&self, relative_path: &str) {
        self.0.lock().unwrap().ids.remove(relative_path);
    }

    fn put_pid(&self, pid: u32, relative_path: &str) {
        self.0
            .lock()
            .unwrap()
            .pids
            .insert(pid, relative_path.to_owned());
    }

    fn location(relative_path: &str, id: u64) -> CgroupLocation {
        CgroupLocation {
            relative_path: relative_path.to_owned(),
            directory: PathBuf::from("/sys/fs/cgroup/unified")
                .join(relative_path.trim_start_matches('/')),
            id,
        }
    }
}

impl CgroupLocator for FakeCgroups {
    fn of_pid(&self, pid: u32) -> Result<CgroupLocation, CgroupError> {
        let state = self.0.lock().unwrap();
        let path = state
            .pids
            .get(&pid)
            .ok_or(CgroupError::NoUnifiedMembership { pid })?;
        let id = state
            .ids
            .get(path)
            .ok_or(CgroupError::NoUnifiedMembership { pid })?;
        Ok(Self::location(path, *id))
    }

    fn of_relative_path(&self, relative_path: &str) -> Result<Option<CgroupLocation>, CgroupError> {
        let state = self.0.lock().unwrap();
        Ok(state
            .ids
            .get(relative_path)
            .map(|id| Self::location(relative_path, *id)))
    }

    fn relative_path_of_id(&self, cgroup_id: u64) -> Result<Option<String>, CgroupError> {
        let state = self.0.lock().unwrap();
        Ok(state
            .ids
            .iter()
            .find(|(_, id)| **id == cgroup_id)
            .map(|(path, _)| path.clone()))
    }
}

struct Harness {
    engine: FakeEngine,
    tracker: ContainerTracker<FakeEngine, FakeCgroups>,
    events: broadcast::Receiver<TrackerEvent>,
}

impl Harness {
    fn spawn(engine: FakeEngine, cgroups: FakeCgroups) -> Self {
        Self::spawn_with(engine, cgroups, TrackerOptions::default())
    }

    fn spawn_with(engine: FakeEngine, cgroups: FakeCgroups, options: TrackerOptions) -> Self {
        let tracker = ContainerTracker::spawn(engine.clone(), cgroups.clone(), options);
        let events = tracker.subscribe();
        Self {
            engine,
            tracker,
            events,
        }
    }

    /// The next tracker event that `select` picks, skipping the others.
    async fn next<T>(
        &mut self,
        what: &str,
        mut select: impl FnMut(TrackerEvent) -> Option<T>,
    ) -> T {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(event) => {
                        if let Some(found) = select(event) {
                            return found;
                        }
                    }
                    Err(error) => panic!("tracker events ended while waiting for {what}: {error}"),
                }
            }
        };
        tokio::time::timeout(HANG_GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what}"))
    }

    /// The next cgroup the tracker attributes, with its attribution.
    async fn attributed(&mut self, what: &str) -> (u64, Attribution) {
        self.next(what, |event| match event {
            TrackerEvent::Attributed {
                cgroup_id,
                attribution,
            } => Some((cgroup_id, attribution)),
            _ => None,
        })
        .await
    }

    async fn listed(&mut self) -> (u64, usize) {
        self.next("listing", |event| match event {
            TrackerEvent::Listed { relists, running } => Some((relists, running)),
            _ => None,
        })
        .await
    }

    async fn lifecycle(&mut self, id: &str, lifecycle: Lifecycle) -> TrackedContainer {
        self.next(&format!("{lifecycle:?} of {id}"), |event| {
            let tracked = match event {
                TrackerEvent::Started(tracked)
                | TrackerEvent::Exited(tracked)
                | TrackerEvent::Removed(tracked) => tracked,
                _ => return None,
            };
            (tracked.info.id == id && tracked.lifecycle == lifecycle).then_some(tracked)
        })
        .await
    }
}

/// A running container n with pid 1000+n in `/docker/<id>` with cgroup id 500+n.
fn run_container(engine: &FakeEngine, cgroups: &FakeCgroups, n: u8) -> ContainerInfo {
    let pid = 1000 + u32::from(n);
    let path = format!("/docker/{}", container_id(n));
    cgroups.add(&path, 500 + u64::from(n));
    cgroups.put_pid(pid, &path);
    let container = info(n, Some(pid));
    engine.put(container.clone());
    container
}

fn attributed_to(attribution: &Attribution) -> Option<&str> {
    match attribution {
        Attribution::Container(info) => Some(info.id.as_str()),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn containers_running_at_start_are_seeded() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let a = run_container(&engine, &cgroups, 1);
    let b = run_container(&engine, &cgroups, 2);
    let mut harness = Harness::spawn(engine, cgroups);

    assert_eq!(harness.listed().await, (1, 2));
    assert!(matches!(
        harness.tracker.connection(),
        ConnectionState::Connected { relists: 1, .. }
    ));
    assert_eq!(
        attributed_to(&harness.tracker.attribute(501)),
        Some(a.id.as_str())
    );
    assert_eq!(
        attributed_to(&harness.tracker.attribute(502)),
        Some(b.id.as_str())
    );
    let tracked = harness.tracker.container("app-2").unwrap();
    assert_eq!(tracked.lifecycle, Lifecycle::Running);
    assert_eq!(tracked.cgroup_ids, vec![502]);
    assert_eq!(
        tracked.info.cgroup_path,
        Some(PathBuf::from(format!(
            "/sys/fs/cgroup/unified/docker/{}",
            b.id
        )))
    );
    assert!(matches!(
        harness.tracker.attribute(999),
        Attribution::Unknown(PendingCgroup {
            cgroup_id: 999,
            reason: PendingReason::NotResolvedYet,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn start_die_and_destroy_keep_the_mapping() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let mut harness = Harness::spawn(engine.clone(), cgroups.clone());
    assert_eq!(harness.listed().await, (1, 0));

    let web = run_container(&engine, &cgroups, 3);
    engine.send(ContainerAction::Start, &web.id, &[("name", "app-3")]);
    let started = harness.lifecycle(&web.id, Lifecycle::Running).await;
    assert_eq!(started.info.cgroup_id, Some(503));
    assert_eq!(
        attributed_to(&harness.tracker.attribute(503)),
        Some(web.id.as_str())
    );

    engine.send(
        ContainerAction::Die,
        &web.id,
        &[("name", "app-3"), ("exitCode", "0")],
    );
    let exited = harness.lifecycle(&web.id, Lifecycle::Exited).await;
    assert!(!exited.info.running);
    assert_eq!(exited.info.pid, None);
    // Checks drained after the exit still belong to the container.
    assert_eq!(
        attributed_to(&harness.tracker.attribute(503)),
        Some(web.id.as_str())
    );

    engine.forget(&web.id);
    engine.send(ContainerAction::Destroy, &web.id, &[("name", "app-3")]);
    harness.lifecycle(&web.id, Lifecycle::Removed).await;
    assert_eq!(
        attributed_to(&harness.tracker.attribute(503)),
        Some(web.id.as_str())
    );
    assert_eq!(
        harness.tracker.container(&web.id).unwrap().lifecycle,
        Lifecycle::Removed
    );
}

#[tokio::test(start_paused = true)]
async fn a_container_gone_before_inspection_is_known_from_its_events() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let mut harness = Harness::spawn(engine.clone(), FakeCgroups::default());
    harness.listed().await;

    let id = container_id(4);
    engine.send(
        ContainerAction::Start,
        &id,
        &[
            ("name", "quick"),
            ("image", "busybox"),
            (COMPOSE_SERVICE_LABEL, "job"),
        ],
    );
    let tracked = harness.lifecycle(&id, Lifecycle::Exited).await;
    assert_eq!(tracked.info.name, "quick");
    assert_eq!(tracked.info.compose_service.as_deref(), Some("job"));
    engine.send(ContainerAction::Die, &id, &[("name", "quick")]);
    engine.send(ContainerAction::Destroy, &id, &[("name", "quick")]);
    harness.lifecycle(&id, Lifecycle::Removed).await;
    // A late die does not bring it back.
    engine.send(ContainerAction::Die, &id, &[("name", "quick")]);
    harness.lifecycle(&id, Lifecycle::Removed).await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_cgroup_is_attributed_once_its_container_starts() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let mut harness = Harness::spawn(engine.clone(), cgroups.clone());
    harness.listed().await;

    // runc's setup checks arrive before the cgroup exists in the tracker's world.
    assert!(matches!(
        harness.tracker.resolve(505).await,
        Attribution::Unknown(_)
    ));
    assert_eq!(harness.tracker.pending().len(), 1);

    let job = run_container(&engine, &cgroups, 5);
    engine.send(ContainerAction::Start, &job.id, &[]);
    let (cgroup_id, attribution) = harness
        .attributed("attribution of the pending cgroup")
        .await;
    assert_eq!(cgroup_id, 505);
    assert_eq!(attributed_to(&attribution), Some(job.id.as_str()));
    assert!(harness.tracker.pending().is_empty());
}

#[tokio::test(start_paused = true)]
async fn resolve_finds_containers_and_their_sub_cgroups_by_path() {
    let engine = FakeEngine::up(CgroupDriver::Systemd);
    let cgroups = FakeCgroups::default();
    let mut harness = Harness::spawn(engine.clone(), cgroups.clone());
    harness.listed().await;

    // A container the tracker has not heard of yet, in the systemd layout, with a child cgroup.
    let id = container_id(6);
    let scope = format!("/system.slice/docker-{id}.scope");
    cgroups.add(&scope, 606);
    cgroups.add(&format!("{scope}/init.scope"), 607);
    engine.put(info(6, None));
    assert_eq!(
        attributed_to(&harness.tracker.resolve(607).await),
        Some(id.as_str())
    );
    assert_eq!(
        attributed_to(&harness.tracker.resolve(606).await),
        Some(id.as_str())
    );
    assert_eq!(harness.tracker.container(&id).unwrap().info.name, "app-6");

    cgroups.add("/system.slice/ssh.service", 700);
    assert_eq!(harness.tracker.resolve(700).await, Attribution::Host);
    assert_eq!(harness.tracker.attribute(700), Attribution::Host);

    // Another runtime's container: an id the engine does not know, outside Docker's layout.
    cgroups.add(&format!("/kubepods/pod1/{}", container_id(7)), 701);
    assert_eq!(harness.tracker.resolve(701).await, Attribution::Host);

    // Docker's layout, but removed before anyone asked: still that container's.
    let gone = container_id(8);
    cgroups.add(&format!("/system.slice/docker-{gone}.scope"), 702);
    assert_eq!(
        attributed_to(&harness.tracker.resolve(702).await),
        Some(gone.as_str())
    );
    assert_eq!(
        harness.tracker.container(&gone).unwrap().lifecycle,
        Lifecycle::Removed
    );
}

#[tokio::test(start_paused = true)]
async fn a_vanished_cgroup_waits_then_goes_to_the_host() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let mut harness = Harness::spawn(engine, FakeCgroups::default());
    harness.listed().await;

    assert!(matches!(
        harness.tracker.resolve(800).await,
        Attribution::Unknown(PendingCgroup {
            reason: PendingReason::CgroupGone,
            ..
        })
    ));
    let (cgroup_id, attribution) = harness.attributed("the vanished cgroup settling").await;
    assert_eq!((cgroup_id, attribution), (800, Attribution::Host));
    assert_eq!(harness.tracker.attribute(800), Attribution::Host);
}

#[tokio::test(start_paused = true)]
async fn a_restart_maps_the_new_cgroup_to_the_same_container() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let web = run_container(&engine, &cgroups, 9);
    let mut harness = Harness::spawn(engine.clone(), cgroups.clone());
    harness.listed().await;

    engine.send(ContainerAction::Die, &web.id, &[]);
    harness.lifecycle(&web.id, Lifecycle::Exited).await;
    // runc recreates the directory: same path, new inode, new pid.
    let path = format!("/docker/{}", web.id);
    cgroups.remove(&path);
    cgroups.add(&path, 909);
    cgroups.put_pid(2009, &path);
    let mut restarted = web.clone();
    restarted.pid = Some(2009);
    restarted.started_at = Some("2026-12-03T17:00:00Z".into());
    engine.put(restarted);
    engine.send(ContainerAction::Start, &web.id, &[]);
    let tracked = harness.lifecycle(&web.id, Lifecycle::Running).await;

    assert_eq!(tracked.cgroup_ids, vec![509, 909]);
    assert_eq!(tracked.info.cgroup_id, Some(909));
    assert_eq!(
        attributed_to(&harness.tracker.attribute(509)),
        Some(web.id.as_str())
    );
    assert_eq!(
        attributed_to(&harness.tracker.attribute(909)),
        Some(web.id.as_str())
    );
    assert_eq!(harness.tracker.containers().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reused_pid_does_not_give_a_container_a_stranger_cgroup() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let id = container_id(10);
    // The container's init exited and its pid now belongs to a host process.
    cgroups.add("/system.slice/cron.service", 42);
    cgroups.put_pid(1010, "/system.slice/cron.service");
    cgroups.add(&format!("/docker/{id}"), 510);
    engine.put(info(10, Some(1010)));
    let mut harness = Harness::spawn(engine, cgroups);
    harness.listed().await;

    let tracked = harness.tracker.container(&id).unwrap();
    assert_eq!(
        tracked.info.cgroup_id,
        Some(510),
        "found from the engine's layout instead"
    );
    assert!(!matches!(
        harness.tracker.attribute(42),
        Attribution::Container(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn an_engine_restart_reconnects_and_lists_again() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let old = run_container(&engine, &cgroups, 11);
    let options = TrackerOptions {
        reconnect_delay: Duration::from_millis(100),
        max_reconnect_delay: Duration::from_secs(1),
        ..TrackerOptions::default()
    };
    let mut harness = Harness::spawn_with(engine.clone(), cgroups.clone(), options);
    assert_eq!(harness.listed().await, (1, 1));
    let mut connection = harness.tracker.watch_connection();

    engine.stop();
    harness
        .next("the disconnection", |event| {
            matches!(event, TrackerEvent::Disconnected { .. }).then_some(())
        })
        .await;
    // A few failed attempts while the engine is down.
    tokio::time::timeout(
        HANG_GUARD,
        connection
            .wait_for(|state| matches!(state, ConnectionState::Disconnected { attempt: 3, .. })),
    )
    .await
    .expect("no third attempt")
    .unwrap();

    // Back up: the old container stayed stopped and was removed, a new one runs.
    engine.forget(&old.id);
    let new = run_container(&engine, &cgroups, 12);
    engine.start();
    assert_eq!(harness.listed().await, (2, 1));
    assert!(matches!(
        harness.tracker.connection(),
        ConnectionState::Connected { relists: 2, .. }
    ));
    assert_eq!(harness.engine.subscriptions(), 2);
    assert_eq!(
        harness.tracker.container(&old.id).unwrap().lifecycle,
        Lifecycle::Removed
    );
    assert_eq!(
        harness.tracker.container(&new.id).unwrap().lifecycle,
        Lifecycle::Running
    );
    assert_eq!(
        attributed_to(&harness.tracker.attribute(511)),
        Some(old.id.as_str())
    );
    assert_eq!(
        attributed_to(&harness.tracker.attribute(512)),
        Some(new.id.as_str())
    );

    // Events flow on the new subscription.
    harness.engine.send(ContainerAction::Die, &new.id, &[]);
    harness.lifecycle(&new.id, Lifecycle::Exited).await;
}

#[tokio::test(start_paused = true)]
async fn a_container_that_stopped_during_an_outage_is_marked_exited() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let web = run_container(&engine, &cgroups, 13);
    let mut harness = Harness::spawn(engine.clone(), cgroups.clone());
    harness.listed().await;

    engine.stop();
    engine.start();
    assert_eq!(harness.listed().await, (2, 0));
    let tracked = harness.tracker.container(&web.id).unwrap();
    assert_eq!(tracked.lifecycle, Lifecycle::Exited);
    assert_eq!(
        tracked.info.cgroup_id,
        Some(513),
        "the exited container keeps its cgroup"
    );
}

#[tokio::test(start_paused = true)]
async fn removed_containers_are_forgotten_beyond_capacity() {
    let engine = FakeEngine::up(CgroupDriver::Cgroupfs);
    let cgroups = FakeCgroups::default();
    let options = TrackerOptions {
        removed_capacity: 1,
        ..TrackerOptions::default()
    };
    let first = run_container(&engine, &cgroups, 14);
    let second = run_container(&engine, &cgroups, 15);
    let mut harness = Harness::spawn_with(engine.clone(), cgroups, options);
    harness.listed().await;

    for container in [&first, &second] {
        engine.forget(&container.id);
        engine.send(ContainerAction::Destroy, &container.id, &[]);
        harness.lifecycle(&container.id, Lifecycle::Removed).await;
    }
    assert!(harness.tracker.container(&first.id).is_none());
    assert!(!matches!(
        harness.tracker.attribute(514),
        Attribution::Container(_)
    ));
    assert_eq!(
        attributed_to(&harness.tracker.attribute(515)),
        Some(second.id.as_str())
    );
}
