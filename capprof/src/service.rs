//! The daemon with everything around it: the Docker engine follower, the collector and the API
//! server. `capprof daemon` runs one until a signal; `capprof profile` and `capprof verify` embed
//! one for the length of a run when no daemon is running.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    api::{self, ApiContext, Listeners, SocketError, TracerHealth},
    attribution::{self, DockerAttributor, SharedTracker, TrackedRunningContainers},
    daemon::{Daemon, DaemonConfig, DaemonError, DaemonState},
    docker::{EngineAddress, TrackerEvent},
    fold::Attributor,
    loader::{LoadError, Tracer},
    trace::TraceError,
};

/// Why the service could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("the daemon's {0} task failed")]
    Task(&'static str),
    #[error("cannot detach the tracer pinned at {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running daemon serving its API.
#[derive(Debug)]
pub struct DaemonService {
    /// `None` when the kernel offers no way to trace: stored profiles are served, live streams
    /// are refused with FAILED_PRECONDITION.
    daemon: Option<Daemon>,
    state: Arc<DaemonState>,
    config: DaemonConfig,
    stop_serving: watch::Sender<bool>,
    server: JoinHandle<Result<(), SocketError>>,
    health_monitor: JoinHandle<()>,
}

impl DaemonService {
    /// Follows the Docker engine at `docker` (retrying while it is down), loads or resumes the
    /// pinned tracer, and serves the API on `listeners`.
    pub async fn start(
        config: DaemonConfig,
        listeners: Listeners,
        docker: EngineAddress,
    ) -> Result<Self, ServiceError> {
        let tracker: SharedTracker = Arc::new(OnceLock::new());
        tokio::spawn(attribution::follow_engine(docker, tracker.clone()));

        let runtime = tokio::runtime::Handle::current();
        let daemon_config = config.clone();
        let attributor_tracker = tracker.clone();
        let started = tokio::task::spawn_blocking(move || {
            Daemon::start(&daemon_config, |store| {
                let attributor = DockerAttributor::new(
                    attributor_tracker,
                    runtime,
                    attribution::remembered_owners(store)?,
                    store.cgroup_names()?,
                );
                Ok(Box::new(attributor) as Box<dyn Attributor + Send>)
            })
        })
        .await
        .map_err(|_| ServiceError::Task("start"))?;
        let (daemon, state, health) = match started {
            Ok(daemon) => {
                let state = daemon.state();
                (Some(daemon), state, TracerHealth::Collecting)
            }
            Err(DaemonError::Trace(TraceError::Load(
                error @ (LoadError::NoAttachPath { .. } | LoadError::Btf(_)),
            ))) => {
                let reason = error.to_string();
                tracing::error!(%reason, "cannot trace on this kernel; serving stored profiles only");
                let state = Arc::new(DaemonState::store_only(&config).map_err(DaemonError::from)?);
                (None, state, TracerHealth::KernelUnsupported { reason })
            }
            Err(other) => return Err(other.into()),
        };

        tokio::spawn(record_container_exits(tracker.clone(), state.clone()));
        let (health, tracer_health) = watch::channel(health);
        let health_monitor = tokio::spawn(watch_collector(state.clone(), health));
        let context = ApiContext {
            state: state.clone(),
            containers: Arc::new(TrackedRunningContainers(tracker)),
            tracer_health,
        };
        let (stop_serving, mut stopping) = watch::channel(false);
        let server = tokio::spawn(api::serve(context, listeners, async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }));
        Ok(Self {
            daemon,
            state,
            config,
            stop_serving,
            server,
            health_monitor,
        })
    }

    /// The state the API serves.
    pub fn state(&self) -> Arc<DaemonState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes (or the server fails), then stops.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        tokio::select! {
            _ = shutdown => {}
            result = &mut self.server => {
                // The server stopped by itself: report why after stopping the rest.
                let served = result.map_err(|_| ServiceError::Task("API server"));
                self.stop_collecting().await?;
                return served?.map_err(ServiceError::from);
            }
        }
        self.stop().await
    }

    /// Stops serving and collecting (after a last poll). The tracer stays pinned.
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        let _ = self.stop_serving.send(true);
        let served = (&mut self.server)
            .await
            .map_err(|_| ServiceError::Task("API server"))?;
        self.stop_collecting().await?;
        served.map_err(ServiceError::from)
    }

    /// Stops, and detaches the tracer when this service loaded it (rather than resuming one a
    /// daemon left pinned): for a run that should leave nothing attached behind it.
    pub async fn stop_and_detach_if_loaded(self) -> Result<(), ServiceError> {
        let loaded_here = self.daemon.is_some() && !self.state.status().resumed;
        let pin_root = self.config.pin_root.clone();
        self.stop().await?;
        if loaded_here {
            detach(&pin_root)?;
        }
        Ok(())
    }

    async fn stop_collecting(self) -> Result<(), ServiceError> {
        self.health_monitor.abort();
        let Some(daemon) = self.daemon else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || daemon.shutdown())
            .await
            .map_err(|_| ServiceError::Task("collector"))?
            .map_err(ServiceError::from)
    }
}

fn detach(pin_root: &Path) -> Result<(), ServiceError> {
    Tracer::unpin_all(pin_root).map_err(|source| ServiceError::Unpin {
        path: pin_root.to_owned(),
        source,
    })
}

/// Keeps the store's exit times true to the engine's events, so that a container that stops
/// making checks still shows as exited (and its profile ages out after the retention period).
async fn record_container_exits(tracker: SharedTracker, state: Arc<DaemonState>) {
    let tracker = loop {
        if let Some(tracker) = tracker.get() {
            break tracker.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut events = tracker.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed container events; exit times may be late");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let (id, exited_at_ms) = match &event {
            TrackerEvent::Exited(container) | TrackerEvent::Removed(container) => (
                container.info.id.clone(),
                Some(crate::fold::Clock::now().wall_now_ms),
            ),
            TrackerEvent::Started(container) => (container.info.id.clone(), None),
            _ => continue,
        };
        let state = state.clone();
        let written = tokio::task::spawn_blocking(move || {
            state.store().set_container_exit(&id, exited_at_ms)
        })
        .await;
        if let Ok(Err(error)) = written {
            tracing::warn!(%error, "cannot record a container's exit");
        }
    }
}

/// Tells the API when the collector stops, so that live streams say so instead of going quiet.
async fn watch_collector(state: Arc<DaemonState>, health: watch::Sender<TracerHealth>) {
    let mut checkup = tokio::time::interval(Duration::from_secs(1));
    loop {
        checkup.tick().await;
        let failure = state
            .collector_failure
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(reason) = failure {
            tracing::error!(%reason, "the collector stopped; stored profiles are still served, new checks are not recorded");
            let _ = health.send(TracerHealth::Stopped { reason });
            return;
        }
    }
}
