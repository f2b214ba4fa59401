//! The container tracker against a real Docker engine and the real cgroup hierarchy.
//!
//! Each test starts its own containers (removed when they drop) and its own tracker. Waits
//! are bounded by a generous hang guard, never by expectations of speed.

use std::{
    future::Future,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use capprof::docker::{
    Attribution, COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, ConnectionState, DockerTracker,
    HostCgroups, Lifecycle, PendingReason, TrackedContainer, TrackerOptions, connect,
};
use capprof_tests::{
    ci,
    docker::{ContainerBuilder, DockerEngine, HarnessError, TestContainer, engine_or_skip},
};

/// Only there so that a broken tracker fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(50);

/// Polls `probe` until it returns a value.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let wait = async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

/// A tracker on the harness's engine, connected and listed; `None` after a skip.
async fn tracker(engine: &DockerEngine) -> Option<DockerTracker> {
    let cgroups = ci::require(HostCgroups::locate(), "no cgroup v2 hierarchy")?;
    let docker = connect(&engine.address()).await.unwrap_or_else(|error| {
        panic!("the harness's engine answers, but connect() failed: {error}")
    });
    let tracker = DockerTracker::spawn(docker, cgroups, TrackerOptions::default());
    let mut connection = tracker.watch_connection();
    tokio::time::timeout(
        HANG_GUARD,
        connection.wait_for(|state| matches!(state, ConnectionState::Connected { .. })),
    )
    .await
    .expect("the tracker never connected")
    .expect("the tracker stopped");
    Some(tracker)
}

fn start(builder: ContainerBuilder<'_>) -> TestContainer {
    builder
        .start()
        .unwrap_or_else(|error| panic!("cannot start a test container: {error}"))
}

/// The v2 hierarchy's mount point, read here without capprof.
fn unified_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().position(|field| *field == "-")?;
            (fields.get(separator + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .expect("a cgroup2 mount")
}

/// The container's cgroup directory and its inode, found without capprof: the directory of the
/// v2 hierarchy named after the container (`<id>` or `docker-<id>.scope`).
fn cgroup_directory_of(container_id: &str) -> (PathBuf, u64) {
    let names = [
        container_id.to_owned(),
        format!("docker-{container_id}.scope"),
    ];
    let mut pending = vec![unified_mount()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            if names.iter().any(|name| entry.file_name() == name.as_str()) {
                return (entry.path(), metadata.ino());
            }
            pending.push(entry.path());
        }
    }
    panic!("no v2 cgroup directory is named after container {container_id}");
}

/// The v2 cgroup directory of a host process, from `/proc/<pid>/cgroup`.
fn cgroup_directory_of_pid(pid: u32) -> (PathBuf, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 membership line");
    let directory = unified_mount().join(relative.trim_start_matches('/'));
    let inode = std::fs::metadata(&directory).unwrap().ino();
    (directory, inode)
}

fn tracked(tracker: &DockerTracker, container: &TestContainer) -> Option<TrackedContainer> {
    tracker.container(container.id())
}

fn attributed_to(attribution: &Attribution) -> Option<&str> {
    match attribution {
        Attribution::Container(info) => Some(info.id.as_str()),
        _ => None,
    }
}

fn same_directory(left: &Path, right: &Path) -> bool {
    left.canonicalize().unwrap() == right.canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_running_before_the_tracker_starts_is_found_with_its_cgroup() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let container =
        start(ContainerBuilder::new(&engine, "before-tracker").command(["sleep", "600"]));
    let (directory, inode) = cgroup_directory_of(container.id());
    let Some(tracker) = tracker(&engine).await else {
        return;
    };

    let found = tracked(&tracker, &container).expect("the listing found the running container");
    assert_eq!(found.lifecycle, Lifecycle::Running);
    assert_eq!(found.info.name, container.name());
    assert_eq!(found.info.image, capprof_tests::docker::BUSYBOX_IMAGE);
    assert_eq!(
        found.info.cgroup_id,
        Some(inode),
        "the cgroup id is the directory's inode"
    );
    assert!(same_directory(
        found.info.cgroup_path.as_deref().unwrap(),
        &directory
    ));
    let pid = container
        .pid()
        .unwrap()
        .expect("a running container has a pid");
    assert_eq!(found.info.pid, Some(pid));
    assert_eq!(cgroup_directory_of_pid(pid), (directory, inode));
    assert_eq!(
        attributed_to(&tracker.attribute(inode)),
        Some(container.id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_die_and_destroy_are_followed_and_the_mapping_stays() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let container = start(ContainerBuilder::new(&engine, "lifecycle").command(["sleep", "600"]));
    let (_, inode) = cgroup_directory_of(container.id());

    let running = eventually("the start event", || async {
        tracked(&tracker, &container).filter(|found| found.lifecycle == Lifecycle::Running)
    })
    .await;
    assert_eq!(running.info.cgroup_id, Some(inode));

    container.stop().unwrap();
    let exited = eventually("the die event", || async {
        tracked(&tracker, &container).filter(|found| found.lifecycle == Lifecycle::Exited)
    })
    .await;
    assert!(!exited.info.running);
    assert_eq!(exited.cgroup_ids, vec![inode]);
    assert_eq!(
        attributed_to(&tracker.attribute(inode)),
        Some(container.id()),
        "checks drained after the exit still belong to the container"
    );

    let id = container.id().to_owned();
    container.remove().unwrap();
    eventually("the destroy event", || async {
        tracker
            .container(&id)
            .filter(|found| found.lifecycle == Lifecycle::Removed)
    })
    .await;
    assert_eq!(attributed_to(&tracker.attribute(inode)), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_exec_process_runs_in_the_container_cgroup() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let container = start(ContainerBuilder::new(&engine, "exec").command(["sleep", "601"]));
    let container_cgroup = eventually("the container's cgroup", || async {
        tracked(&tracker, &container).and_then(|found| found.info.cgroup_id)
    })
    .await;

    container.exec_detached(["sleep", "603"]).unwrap();
    let exec_pid = eventually("the exec'd process", || async {
        let top = engine.cli(["top", container.id(), "-o", "pid,args"]).ok()?;
        top.lines()
            .find(|line| line.contains("sleep 603"))
            .and_then(|line| line.split_whitespace().next()?.parse::<u32>().ok())
    })
    .await;
    let (_, exec_cgroup) = cgroup_directory_of_pid(exec_pid);
    assert_eq!(
        exec_cgroup, container_cgroup,
        "docker exec joins the container's cgroup"
    );
    assert_eq!(
        attributed_to(&tracker.resolve(exec_cgroup).await),
        Some(container.id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_container_keeps_its_identity_and_gains_a_cgroup() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let container = start(ContainerBuilder::new(&engine, "restart").command(["sleep", "600"]));
    let before = eventually("the first cgroup", || async {
        tracked(&tracker, &container).and_then(|found| found.info.cgroup_id)
    })
    .await;

    container.restart().unwrap();
    let (_, after) = cgroup_directory_of(container.id());
    let restarted = eventually("the restart", || async {
        tracked(&tracker, &container).filter(|found| {
            found.lifecycle == Lifecycle::Running && found.info.cgroup_id == Some(after)
        })
    })
    .await;

    // runc removes the cgroup when the container stops and creates it again at the same path:
    // a new directory, so a new inode and a new cgroup id, for the same container.
    assert_ne!(
        before, after,
        "the restarted container's cgroup directory is a new one"
    );
    assert_eq!(restarted.cgroup_ids, vec![before, after]);
    assert_eq!(
        attributed_to(&tracker.attribute(before)),
        Some(container.id())
    );
    assert_eq!(
        attributed_to(&tracker.attribute(after)),
        Some(container.id())
    );
    let same_name = tracker
        .containers()
        .into_iter()
        .filter(|found| found.info.name == container.name())
        .count();
    assert_eq!(same_name, 1, "one container, one profile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_labels_are_read() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let container = start(
        ContainerBuilder::new(&engine, "compose")
            .label(COMPOSE_PROJECT_LABEL, "shop")
            .label(COMPOSE_SERVICE_LABEL, "web")
            .label("tier", "front")
            .command(["sleep", "600"]),
    );
    let found = eventually("the labelled container", || async {
        tracked(&tracker, &container)
    })
    .await;
    assert_eq!(found.info.compose_project.as_deref(), Some("shop"));
    assert_eq!(found.info.compose_service.as_deref(), Some("web"));
    assert_eq!(
        found.info.labels.get("tier").map(String::as_str),
        Some("front")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_container_resolves_from_its_cgroup_whatever_the_tracker_has_seen() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let container =
        start(ContainerBuilder::new(&engine, "resolve-early").command(["sleep", "600"]));
    let (_, inode) = cgroup_directory_of(container.id());
    // Asked as the daemon asks on a first sighting: the start event may or may not be in yet.
    assert_eq!(
        attributed_to(&tracker.resolve(inode).await),
        Some(container.id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroups_below_a_container_belong_to_it_and_others_to_the_host() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let container = start(ContainerBuilder::new(&engine, "sub-cgroup").command(["sleep", "600"]));
    let (directory, _) = cgroup_directory_of(container.id());

    // What systemd or a process manager inside the container would create.
    let child = directory.join("capprof-test-child");
    std::fs::create_dir(&child).unwrap();
    let child_id = std::fs::metadata(&child).unwrap().ino();
    let child_attribution = tracker.resolve(child_id).await;
    std::fs::remove_dir(&child).unwrap();
    assert_eq!(attributed_to(&child_attribution), Some(container.id()));

    let root_id = std::fs::metadata(unified_mount()).unwrap().ino();
    assert_eq!(tracker.resolve(root_id).await, Attribution::Host);

    // A cgroup that is gone before anyone asked cannot be placed yet.
    let gone = unified_mount().join(format!("capprof-test-gone-{}", std::process::id()));
    std::fs::create_dir(&gone).unwrap();
    let gone_id = std::fs::metadata(&gone).unwrap().ino();
    std::fs::remove_dir(&gone).unwrap();
    assert!(matches!(
        tracker.resolve(gone_id).await,
        Attribution::Unknown(pending) if pending.reason == PendingReason::CgroupGone
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restart_is_survived_with_a_new_listing() {
    let Some(engine) = engine_or_skip() else {
        return;
    };
    if !engine.is_owned() {
        // Not a missing capability: the harness never restarts an engine it did not start.
        ci::skip(format_args!(
            "the engine at {} is not the harness's own dockerd",
            engine.docker_host()
        ));
        return;
    }
    let Some(tracker) = tracker(&engine).await else {
        return;
    };
    let stopping_fast = "--stop-timeout=1";
    let always = start(
        ContainerBuilder::new(&engine, "engine-restart-always")
            .restart_policy("always")
            .option(stopping_fast)
            .command(["sleep", "600"]),
    );
    let plain = start(
        ContainerBuilder::new(&engine, "engine-restart-plain")
            .option(stopping_fast)
            .command(["sleep", "600"]),
    );
    let always_before = eventually("both containers", || async {
        let plain_running = tracked(&tracker, &plain)?.lifecycle == Lifecycle::Running;
        plain_running.then_some(())?;
        tracked(&tracker, &always)?.info.cgroup_id
    })
    .await;

    let mut states = tracker.watch_connection();
    let saw_disconnect = tokio::spawn(async move {
        states
            .wait_for(|state| matches!(state, ConnectionState::Disconnected { .. }))
            .await
            .is_ok()
    });
    let engine = match tokio::task::block_in_place(|| engine.restart_engine()) {
        Ok(engine) => engine,
        Err(error @ HarnessError::Shared { .. }) => {
            // Another test process uses the engine right now; restarting it would break that.
            ci::skip(error);
            return;
        }
        Err(error) => panic!("cannot restart the harness's dockerd: {error}"),
    };
    assert!(
        tokio::time::timeout(HANG_GUARD, saw_disconnect)
            .await
            .unwrap()
            .unwrap(),
        "the tracker noticed the engine going away"
    );

    let relisted = eventually("a new listing", || async {
        match tracker.connection() {
            ConnectionState::Connected { relists, .. } if relists >= 2 => Some(relists),
            _ => None,
        }
    })
    .await;
    assert!(relisted >= 2);
    let (always_after, plain_after) =
        eventually("the engine's containers after its restart", || async {
            let plain_state = tracked(&tracker, &plain)?;
            let always_state = tracked(&tracker, &always)?;
            let settled = plain_state.lifecycle == Lifecycle::Exited
                && always_state.lifecycle == Lifecycle::Running
                && always_state.info.cgroup_id != Some(always_before);
            settled.then_some((always_state, plain_state))
        })
        .await;

    // The engine stopped `plain` on shutdown and started `always` again on boot.
    assert!(!plain_after.info.running);
    assert_eq!(always_after.cgroup_ids.first(), Some(&always_before));
    let (_, always_now) = cgroup_directory_of(always.id());
    assert_eq!(always_after.info.cgroup_id, Some(always_now));
    assert_eq!(
        attributed_to(&tracker.attribute(always_before)),
        Some(always.id())
    );
    assert_eq!(
        attributed_to(&tracker.attribute(always_now)),
        Some(always.id())
    );
    drop((always, plain));
    drop(engine);
}
