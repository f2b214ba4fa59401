//! The long-running profiler: a pinned tracer, folded into per-container profiles every poll and
//! kept in the store, with the state the API serves.
//!
//! The collector runs on a thread of its own (the kernel's maps are read with blocking system
//! calls); everything else is async. Shutting down leaves the tracer pinned, so checks made while
//! the daemon is down are counted and folded when it comes back; `capprof unload` detaches it.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{error, info, warn};

use crate::{
    attach::{AttachChoice, AttachRequest},
    collector::TracerCounters,
    fold::{Attributor, Clock, Folder},
    loader::{Tracer, TracerOptions},
    profile::{EntryKey, Example, Subject},
    store::{Batch, Store, StoreError},
    trace::{TraceError, TraceSession},
};

/// Where profiles are kept unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/capprof";
/// The environment variable that names the state directory for every command.
pub const STATE_DIR_ENV: &str = "CAPPROF_STATE_DIR";
/// Where the tracer is pinned in bpffs unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/capprof";
/// The environment variable that names the pin directory for every command.
pub const PIN_DIR_ENV: &str = "CAPPROF_PIN_DIR";

/// Where the daemon keeps things and how it traces.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The database lives here (`capprof.db`).
    pub state_dir: PathBuf,
    /// bpffs directory for the pinned tracer.
    pub pin_root: PathBuf,
    pub attach: AttachRequest,
    /// How often the kernel's counts are folded and stored: the most a SIGKILL can lose.
    pub poll_interval: Duration,
    /// How long exited containers' own profiles are kept (merged profiles stay until reset).
    pub retention: Duration,
    pub events_bytes: u32,
}

/// Half a second: a watcher sees a changed list well within a second of the check, and a
/// SIGKILL can lose at most that much (the kernel keeps counting: see the module docs).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pin_root: PathBuf::from(DEFAULT_PIN_DIR),
            attach: AttachRequest::Auto,
            poll_interval: DEFAULT_POLL_INTERVAL,
            retention: Duration::from_secs(7 * 24 * 3600),
            events_bytes: capprof_common::DEFAULT_EVENTS_BYTES,
        }
    }
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot mount bpffs at {path} for the pinned tracer: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the collector thread failed: {0}")]
    Collector(String),
}

/// What `capprof status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonStatus {
    pub version: &'static str,
    /// The attach path in use; `None` when the kernel offers none and only stored profiles are
    /// served.
    pub attach: Option<AttachChoice>,
    /// The tracer was found pinned by an earlier daemon and kept counting meanwhile.
    pub resumed: bool,
    pub kernel: String,
    pub started_at_ms: i64,
    pub counters: TracerCounters,
    /// Milliseconds since the epoch of the last successful poll.
    pub last_poll_ms: i64,
    /// Keys whose cgroup is not attributed yet.
    pub pending_keys: usize,
}

/// A change to one subject's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileChange {
    pub subject: Subject,
}

/// Checks folded in one poll for one owner, for live streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveCheck {
    /// The container's own subject, or the host.
    pub subject: Subject,
    pub key: EntryKey,
    /// Checks added by this poll.
    pub delta: u64,
    pub example: Option<Example>,
}

/// State shared between the collector and the API.
#[derive(Debug)]
pub struct DaemonState {
    pub store: Mutex<Store>,
    pub status: RwLock<DaemonStatus>,
    /// Why the collector stopped, once it has (new checks are then no longer recorded).
    pub collector_failure: RwLock<Option<String>>,
    pub changes: broadcast::Sender<ProfileChange>,
    pub checks: broadcast::Sender<LiveCheck>,
}

impl DaemonState {
    /// The state of a daemon starting now, over `store`.
    pub fn new(store: Store, attach: Option<AttachChoice>, resumed: bool) -> Self {
        let status = DaemonStatus {
            version: env!("CARGO_PKG_VERSION"),
            attach,
            resumed,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            started_at_ms: Clock::now().wall_now_ms,
            counters: TracerCounters::default(),
            last_poll_ms: 0,
            pending_keys: 0,
        };
        Self {
            store: Mutex::new(store),
            status: RwLock::new(status),
            collector_failure: RwLock::new(None),
            changes: broadcast::channel(1024).0,
            checks: broadcast::channel(4096).0,
        }
    }

    /// Opens the store alone: for a kernel that offers no way to trace, the stored profiles are
    /// still served.
    pub fn store_only(config: &DaemonConfig) -> Result<Self, StoreError> {
        Ok(Self::new(Store::open(&config.state_dir)?, None, false))
    }

    /// Locks the store; a poisoned lock (a panic mid-write) still holds a consistent database,
    /// since every write is one transaction.
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn status(&self) -> DaemonStatus {
        self.status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Tells the watchers of `subject` that its profile changed.
    pub fn announce_change(&self, subject: &Subject) {
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(ProfileChange {
            subject: subject.clone(),
        });
    }

    /// Announces, once each, the subjects whose profiles a stored batch changed.
    pub fn announce_batch(&self, batch: &Batch) {
        let mut changed: Vec<&Subject> = batch.entries.iter().map(|entry| &entry.subject).collect();
        changed.sort();
        changed.dedup();
        for subject in changed {
            self.announce_change(subject);
        }
    }
}

/// A running daemon: its shared state and the collector thread.
#[derive(Debug)]
pub struct Daemon {
    state: Arc<DaemonState>,
    stop: Arc<AtomicBool>,
    collector: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
}

impl Daemon {
    /// Loads (or resumes) the pinned tracer, opens the store and starts collecting. The attributor
    /// is made from the store, so that it can start from what an earlier daemon attributed.
    pub fn start(
        config: &DaemonConfig,
        make_attributor: impl FnOnce(&Store) -> Result<Box<dyn Attributor + Send>, StoreError>,
    ) -> Result<Self, DaemonError> {
        crate::bpffs::ensure_mounted(config.pin_root.parent().unwrap_or(&config.pin_root))
            .map_err(|source| DaemonError::Bpffs {
                path: config.pin_root.clone(),
                source,
            })?;
        let mut store = Store::open(&config.state_dir)?;
        let options = TracerOptions {
            attach: config.attach,
            cgroup_id: None,
            events_bytes: config.events_bytes,
        };
        let tracer = Tracer::load_pinned(&options, &config.pin_root).map_err(TraceError::from)?;
        let mut session = TraceSession::with_tracer(tracer)?;
        let resumed = session.is_resumed();
        let folder = if resumed {
            // Before the first poll: what was freed must not be folded a second time.
            session.forget_cgroups(&store.forgotten_cgroups()?)?;
            Folder::resume(store.attributed_counts()?, &store.kernel_call_sites()?)
        } else {
            store.reset_kernel_accounting()?;
            Folder::default()
        };
        let attributor = make_attributor(&store)?;
        let choice = if resumed {
            // The reasons the stronger paths were skipped, as the daemon that loaded it saw them.
            store
                .attach_choice()?
                .filter(|recorded| recorded.mode == session.attach_choice().mode)
                .unwrap_or_else(|| session.attach_choice().clone())
        } else {
            store.set_attach_choice(session.attach_choice())?;
            session.attach_choice().clone()
        };
        info!(attach = %choice.explain(), resumed, "capprof daemon started");
        let state = Arc::new(DaemonState::new(store, Some(choice), resumed));
        let stop = Arc::new(AtomicBool::new(false));
        let collector = {
            let (state, stop, config) = (state.clone(), stop.clone(), config.clone());
            std::thread::Builder::new()
                .name("capprof-collector".into())
                .spawn(move || {
                    let result = collect(session, folder, attributor, &state, &stop, &config);
                    if let Err(error) = &result {
                        *state
                            .collector_failure
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(error.to_string());
                    }
                    result
                })
                .map_err(|error| DaemonError::Collector(error.to_string()))?
        };
        Ok(Self {
            state,
            stop,
            collector: Some(collector),
        })
    }

    /// The state the API serves.
    pub fn state(&self) -> Arc<DaemonState> {
        self.state.clone()
    }

    /// Stops collecting after a last poll; the tracer stays pinned.
    pub fn shutdown(mut self) -> Result<(), DaemonError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.collector.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(DaemonError::Collector(
                "the collector thread panicked".into(),
            )),
            None => Ok(()),
        }
    }

    /// Whether the collector thread has stopped by itself (an error).
    pub fn collector_finished(&self) -> bool {
        self.collector
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(collector) = self.collector.take() {
            let _ = collector.join();
        }
    }
}

/// The collector loop: poll, fold, store, notify; until asked to stop, then one last time.
fn collect(
    mut session: TraceSession,
    mut folder: Folder,
    mut attributor: Box<dyn Attributor + Send>,
    state: &DaemonState,
    stop: &AtomicBool,
    config: &DaemonConfig,
) -> Result<(), DaemonError> {
    let mut last_retention = std::time::Instant::now() - Duration::from_secs(3600);
    let mut last_cleanup = std::time::Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if let Err(error) = poll_once(&mut session, &mut folder, attributor.as_mut(), state) {
            error!(%error, "poll failed");
            if matches!(error, DaemonError::Trace(_)) {
                return Err(error);
            }
        }
        if last_cleanup.elapsed() >= CLEANUP_INTERVAL {
            last_cleanup = std::time::Instant::now();
            if let Err(error) = forget_removed_cgroups(&mut session, &mut folder, state) {
                warn!(%error, "freeing the kernel entries of removed cgroups failed");
            }
        }
        if last_retention.elapsed() >= Duration::from_secs(3600) {
            last_retention = std::time::Instant::now();
            let cutoff = Clock::now().wall_now_ms - config.retention.as_millis() as i64;
            match state.store().expire_containers(cutoff) {
                Ok(0) => {}
                Ok(expired) => info!(
                    expired,
                    "forgot the profiles of containers that exited before the retention period"
                ),
                Err(error) => warn!(%error, "retention failed"),
            }
        }
        if stopping {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + config.poll_interval;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(config.poll_interval));
        }
    }
}

/// How often the kernel entries of removed, fully folded cgroups are freed.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Frees the kernel's entries of cgroups that no longer exist and whose checks are all in
/// profiles, so that the maps never fill up however many containers come and go. The store
/// records the decision first: a daemon killed halfway finishes the job when it resumes.
fn forget_removed_cgroups(
    session: &mut TraceSession,
    folder: &mut Folder,
    state: &DaemonState,
) -> Result<(), DaemonError> {
    let gone: std::collections::HashSet<u64> = folder
        .fully_folded_cgroups(session.table())
        .into_iter()
        .filter(|id| matches!(crate::cgroup::path_of_id(*id), Ok(None)))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    state.store().forget_kernel_cgroups(&gone)?;
    session.forget_cgroups(&gone)?;
    folder.forget_cgroups(&gone);
    info!(
        cgroups = gone.len(),
        "freed the kernel entries of removed cgroups"
    );
    Ok(())
}

fn poll_once(
    session: &mut TraceSession,
    folder: &mut Folder,
    attributor: &mut dyn Attributor,
    state: &DaemonState,
) -> Result<(), DaemonError> {
    session.poll()?;
    let clock = Clock::now();
    let fold = folder.fold(session.table(), attributor, clock);
    state.store().apply(&fold.batch)?;
    folder.commit(&fold);
    let batch = fold.batch;

    let pending_keys = session
        .table()
        .records()
        .count()
        .saturating_sub(folder.attributed_keys());
    {
        let mut status = state
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        status.counters = session.table().counters();
        status.last_poll_ms = clock.wall_now_ms;
        status.pending_keys = pending_keys;
    }
    state.announce_batch(&batch);
    for entry in &batch.entries {
        if matches!(entry.subject, Subject::Container { .. } | Subject::Host) && entry.delta > 0 {
            let _ = state.checks.send(LiveCheck {
                subject: entry.subject.clone(),
                key: entry.key,
                delta: entry.delta,
                example: entry.call_sites.first().map(|site| site.example.clone()),
            });
        }
    }
    Ok(())
}
