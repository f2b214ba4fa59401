//! A real API server on a real Unix socket, backed by a real SQLite store in a temporary
//! directory and filled the way the collector fills it: `Store::apply` of a batch, then a
//! `ProfileChange` broadcast per changed subject.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use capprof::{
    api::{
        self, ApiContext, ClientTarget, ListenConfig, Listeners, RunningContainer,
        RunningContainers, SocketError, TracerHealth,
        socket::{SocketGroup, TcpConfig, TlsFiles, UnixSocketConfig},
    },
    attach::{AttachChoice, AttachMode, SkippedMode},
    capability::Capability,
    collector::TracerCounters,
    daemon::{DaemonState, DaemonStatus, LiveCheck},
    fold::container_subjects,
    profile::{EntryCallSite, EntryKey, EntryVerdict, Example, Subject},
    store::{Batch, ContainerRecord, EntryDelta, Store},
};
use capprof_common::check_flags;
use tokio::{
    sync::{broadcast, oneshot, watch},
    task::JoinHandle,
};

/// `shop-web-1`, of Compose service `shop/web`.
pub const WEB_ID: &str = "3f2a11bb22cc33dd44ee55ff66007788990011223344556677889900aabbccdd";
/// `shop-db-1`, of `shop/db`: shares the id prefix `3f2a` with the web container.
pub const DB_ID: &str = "3f2a22bb22cc33dd44ee55ff66007788990011223344556677889900aabbccdd";
/// `blog-web-1`, of `blog/web`: a second project with a `web` service.
pub const BLOG_ID: &str = "77bb11bb22cc33dd44ee55ff66007788990011223344556677889900aabbccdd";
/// `shop-cache-1`: running, no check recorded yet.
pub const CACHE_ID: &str = "99cc11bb22cc33dd44ee55ff66007788990011223344556677889900aabbccdd";
pub const WEB_IMAGE: &str = "registry.local/shop/web:1.2";

/// When the fixture's checks were seen: 2025-12-03 17:01:02 UTC.
pub const SEEN_MS: i64 = 1_764_781_262_000;

/// What the engine reports as running; tests change it.
#[derive(Debug, Default)]
pub struct FakeEngine {
    pub running: Mutex<Vec<RunningContainer>>,
}

impl RunningContainers for FakeEngine {
    fn running(&self) -> Vec<RunningContainer> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub fn container(
    id: &str,
    name: &str,
    image: &str,
    service: Option<(&str, &str)>,
) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        name: name.into(),
        image: image.into(),
        compose_project: service.map(|(project, _)| project.into()),
        compose_service: service.map(|(_, service)| service.into()),
        first_seen_ms: SEEN_MS,
        last_seen_ms: SEEN_MS + 1_000,
        exited_at_ms: None,
    }
}

/// One kind of check, for [`checks_of`].
#[derive(Clone, Debug)]
pub struct Check {
    pub cap: Capability,
    pub verdict: EntryVerdict,
    pub syscall_nr: u32,
    pub flags: u32,
    pub count: u64,
    pub stack: &'static [&'static str],
    pub comm: &'static str,
}

impl Check {
    pub fn key(&self) -> EntryKey {
        EntryKey {
            cap: self.cap.number(),
            verdict: self.verdict,
            syscall_nr: Some(self.syscall_nr),
            flags: self.flags,
        }
    }
}

/// httpd binding port 80 (NET_BIND_SERVICE).
pub fn bind_port_80(count: u64) -> Check {
    Check {
        cap: Capability::NetBindService,
        verdict: EntryVerdict::Granted,
        syscall_nr: 49,
        flags: 0,
        count,
        stack: &[
            "cap_capable",
            "security_capable",
            "ns_capable",
            "__inet_bind+0x1ea",
        ],
        comm: "httpd",
    }
}

/// chown of a data directory (CHOWN).
pub fn chown_files(count: u64) -> Check {
    Check {
        cap: Capability::Chown,
        verdict: EntryVerdict::Granted,
        syscall_nr: 260,
        flags: 0,
        count,
        stack: &[
            "cap_capable",
            "capable_wrt_inode_uidgid",
            "setattr_prepare+0x115",
        ],
        comm: "chown",
    }
}

/// The overcommit heuristic's silent SYS_ADMIN probe on mmap (advisory).
pub fn mmap_probe(count: u64) -> Check {
    Check {
        cap: Capability::SysAdmin,
        verdict: EntryVerdict::Granted,
        syscall_nr: 9,
        flags: 0,
        count,
        stack: &["cap_capable", "security_vm_enough_memory_mm+0x36"],
        comm: "httpd",
    }
}

/// runc's own setuid while setting the container up (runtime setup).
pub fn runtime_setuid(count: u64) -> Check {
    Check {
        cap: Capability::Setuid,
        verdict: EntryVerdict::Granted,
        syscall_nr: 105,
        flags: check_flags::RUNTIME_INIT,
        count,
        stack: &["cap_capable", "ns_capable_setid"],
        comm: "runc:[2:INIT]",
    }
}

/// A denied raw socket (NET_RAW), as `ping` makes under `cap_drop: [ALL]`.
pub fn denied_ping(count: u64) -> Check {
    Check {
        cap: Capability::NetRaw,
        verdict: EntryVerdict::Denied,
        syscall_nr: 41,
        flags: 0,
        count,
        stack: &["cap_capable", "inet_create+0x5b"],
        comm: "ping",
    }
}

/// The batch the collector would write for `checks` made in `container`: into the container's,
/// its service's and its image's profiles.
pub fn checks_of(container: &ContainerRecord, checks: &[Check]) -> Batch {
    let subjects = container_subjects(container);
    let mut batch = Batch {
        containers: vec![container.clone()],
        memberships: subjects
            .iter()
            .map(|subject| (subject.clone(), container.id.clone()))
            .collect(),
        ..Default::default()
    };
    for check in checks {
        let site = EntryCallSite {
            stack: check
                .stack
                .iter()
                .map(|frame| (*frame).to_owned())
                .collect(),
            example: Example {
                pid: 4242,
                tgid: 4242,
                uid: 0,
                gid: 0,
                comm: check.comm.into(),
                seen_at_ms: SEEN_MS,
            },
        };
        for subject in &subjects {
            batch.entries.push(EntryDelta {
                subject: subject.clone(),
                key: check.key(),
                delta: check.count,
                seen_at_ms: SEEN_MS,
                call_sites: vec![site.clone()],
            });
        }
    }
    batch
}

/// The fixture: a web service (port 80, chown, plus an advisory probe and runtime setup), a
/// database, a second project's web service, and a running cache with no checks yet.
pub fn shop_batches() -> Vec<Batch> {
    vec![
        checks_of(
            &container(WEB_ID, "shop-web-1", WEB_IMAGE, Some(("shop", "web"))),
            &[
                bind_port_80(12),
                chown_files(2),
                mmap_probe(340),
                runtime_setuid(1),
            ],
        ),
        checks_of(
            &container(DB_ID, "shop-db-1", "postgres:16", Some(("shop", "db"))),
            &[chown_files(5)],
        ),
        checks_of(
            &container(BLOG_ID, "blog-web-1", "ghost:5", Some(("blog", "web"))),
            &[bind_port_80(3)],
        ),
    ]
}

/// A daemon's API without the kernel: the real server, store and broadcasts.
#[derive(Debug)]
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Where TCP is served, when it is.
    pub tcp_addr: Option<SocketAddr>,
    pub state: Arc<DaemonState>,
    pub health: watch::Sender<TracerHealth>,
    pub engine: Arc<FakeEngine>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), SocketError>>>,
}

impl TestDaemon {
    /// Serves the [`shop_batches`] fixture; `shop-cache-1` runs but made no check.
    pub async fn start() -> Self {
        Self::start_with_tcp(None).await
    }

    /// Like [`TestDaemon::start`], also serving TCP with TLS on a free loopback port.
    pub async fn start_with_tcp(tls: Option<TlsFiles>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("capprof-api-test-")
            .tempdir()
            .expect("temporary directory");
        let store = Store::open(&dir.path().join("state")).expect("store");
        let state = Arc::new(DaemonState {
            store: Mutex::new(store),
            collector_failure: RwLock::new(None),
            status: RwLock::new(DaemonStatus {
                version: env!("CARGO_PKG_VERSION"),
                attach: Some(AttachChoice {
                    mode: AttachMode::Tracepoint,
                    skipped: vec![SkippedMode {
                        mode: AttachMode::Fentry,
                        reason: "loading failed with EPERM".into(),
                    }],
                }),
                resumed: false,
                kernel: "6.18.0-test".into(),
                started_at_ms: SEEN_MS,
                counters: TracerCounters {
                    events_lost: 3,
                    ..Default::default()
                },
                last_poll_ms: SEEN_MS + 500,
                pending_keys: 1,
            }),
            changes: broadcast::channel(64).0,
            checks: broadcast::channel(64).0,
        });
        let engine = Arc::new(FakeEngine::default());
        engine.running.lock().unwrap().push(RunningContainer {
            id: CACHE_ID.into(),
            name: "shop-cache-1".into(),
            image: "redis:7".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("cache".into()),
        });
        let (health, health_receiver) = watch::channel(TracerHealth::Collecting);
        let socket = dir.path().join("run/capprof.sock");
        let listeners = Listeners::bind(&ListenConfig {
            unix: UnixSocketConfig {
                path: socket.clone(),
                mode: 0o660,
                group: SocketGroup::DefaultIfExists,
            },
            tcp: tls.map(|tls| TcpConfig {
                addr: ([127, 0, 0, 1], 0).into(),
                tls,
            }),
        })
        .expect("binding the API socket");
        let tcp_addr = listeners.tcp_addr();
        let context = ApiContext {
            state: state.clone(),
            containers: engine.clone(),
            tracer_health: health_receiver,
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(context, listeners, async move {
            let _ = stop.await;
        }));
        let daemon = Self {
            dir,
            socket,
            tcp_addr,
            state,
            health,
            engine,
            shutdown: Some(shutdown),
            server: Some(server),
        };
        for batch in shop_batches() {
            daemon.apply(&batch);
        }
        daemon
    }

    /// Where clients connect.
    pub fn target(&self) -> ClientTarget {
        ClientTarget::Unix(self.socket.clone())
    }

    /// Stores a batch and announces the changed subjects, as the collector does after a poll.
    pub fn apply(&self, batch: &Batch) {
        self.state.store().apply(batch).expect("storing a batch");
        self.state.announce_batch(batch);
    }

    /// Streams one live check of `subject`, as the collector does for each delta it folds.
    pub fn send_live_check(&self, subject: Subject, check: Check) {
        self.state
            .checks
            .send(LiveCheck {
                subject,
                key: check.key(),
                delta: check.count,
                example: None,
            })
            .expect("a live-check subscriber");
    }

    /// Lets other users reach the socket's directory, so that only the socket's own mode
    /// decides who may connect.
    pub fn open_directories(&self) {
        for directory in [
            self.dir.path(),
            self.socket.parent().expect("socket directory"),
        ] {
            std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
    }

    /// Shuts the server down and returns how `serve` ended.
    pub async fn stop(mut self) -> Result<(), SocketError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let server = self.server.take().expect("running");
        server.await.expect("the server task")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The `capprof` binary: `$CAPPROF_BIN`, else next to the running test executable (cargo puts
/// test binaries in `deps/`, bins one level up). `None` when it is not built.
pub fn capprof_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CAPPROF_BIN") {
        return Some(path.into());
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|directory| directory.join("capprof"))
        .find(|candidate| candidate.is_file())
}

/// Whether `path` is on the `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|directory| directory.join(program))
            .find(|candidate| Path::new(candidate).is_file())
    })
}
