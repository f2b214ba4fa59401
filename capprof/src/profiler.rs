//! Where a profiling run gets its profiles: the running daemon when there is one, otherwise a
//! daemon embedded in this process for the length of the run. Either way the run talks to it
//! through the same API client, so `capprof profile` and `capprof verify` have one code path.

use std::{path::PathBuf, time::Duration};

use crate::{
    api::{
        ApiClient, ClientError, ClientTarget, FailureKind, ListenConfig, Listeners, SocketError,
        socket::UnixSocketConfig,
    },
    daemon::DaemonConfig,
    docker::{AddressError, EngineAddress},
    service::{DaemonService, ServiceError},
};

/// Why profiles cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start an embedded tracer (no capprof daemon is running): {0}")]
    Embedded(#[from] ServiceError),
    #[error("cannot open a socket for the embedded tracer: {0}")]
    Socket(#[from] SocketError),
    #[error(transparent)]
    DockerHost(#[from] AddressError),
}

/// How long a run waits for the last checks to be folded and attributed.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Profiler::settle`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Kernel keys still waiting for their cgroup's owner when the wait ended (0: complete).
    pub pending_keys: u64,
}

/// Access to profiles for one run.
#[derive(Debug)]
pub struct Profiler {
    client: ApiClient,
    embedded: Option<Embedded>,
}

#[derive(Debug)]
struct Embedded {
    service: DaemonService,
    socket_dir: PathBuf,
}

impl Profiler {
    /// Connects to the daemon at `target`; when none is running, starts one in this process with
    /// `embedded` (it shares the daemon's state directory, so profiles of several runs merge,
    /// and resumes the daemon's pinned tracer when one is loaded).
    pub async fn connect_or_embed(
        target: &ClientTarget,
        embedded: DaemonConfig,
    ) -> Result<Self, ProfilerError> {
        match ApiClient::connect(target).await {
            Ok(client) => Ok(Self {
                client,
                embedded: None,
            }),
            Err(error) if error.kind() == FailureKind::DaemonNotRunning => {
                tracing::info!(
                    "no capprof daemon is running: tracing in this process for this run"
                );
                Self::embed(embedded).await
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn embed(config: DaemonConfig) -> Result<Self, ProfilerError> {
        let socket_dir =
            std::env::temp_dir().join(format!("capprof-embedded-{}", std::process::id()));
        let socket = socket_dir.join("capprof.sock");
        let listeners = Listeners::bind(&ListenConfig {
            unix: UnixSocketConfig {
                path: socket.clone(),
                ..UnixSocketConfig::default()
            },
            tcp: None,
        })?;
        let service = DaemonService::start(config, listeners, EngineAddress::from_env()?).await?;
        let client = ApiClient::connect(&ClientTarget::Unix(socket)).await?;
        Ok(Self {
            client,
            embedded: Some(Embedded {
                service,
                socket_dir,
            }),
        })
    }

    /// Whether the tracer runs in this process.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    pub fn client(&mut self) -> &mut ApiClient {
        &mut self.client
    }

    /// Waits until every check made before this call is folded into profiles and attributed to
    /// its container: two polls that began after now, and no key pending. Returns what is still
    /// pending when `timeout` runs out (the daemon keeps it and will attribute it later).
    pub async fn settle(&mut self, timeout: Duration) -> Result<Settled, ProfilerError> {
        let started = std::time::Instant::now();
        let mut after_ms = crate::fold::Clock::now().wall_now_ms;
        let mut polls_seen = 0;
        loop {
            let status = self.client.status().await?;
            if status.last_poll_ms > after_ms {
                polls_seen += 1;
                after_ms = status.last_poll_ms;
            }
            if polls_seen >= 2 && status.pending_keys == 0 {
                return Ok(Settled { pending_keys: 0 });
            }
            if started.elapsed() >= timeout {
                return Ok(Settled {
                    pending_keys: status.pending_keys,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the run: an embedded tracer is stopped, and detached unless a daemon had left it
    /// pinned (which keeps counting for that daemon).
    pub async fn finish(self) -> Result<(), ProfilerError> {
        if let Some(embedded) = self.embedded {
            drop(self.client);
            embedded.service.stop_and_detach_if_loaded().await?;
            let _ = std::fs::remove_dir_all(&embedded.socket_dir);
        }
        Ok(())
    }
}
