//! The API end to end without the kernel: the real server and client over a real Unix socket,
//! a real SQLite store filled the way the collector fills it, and the real `capprof` binary.
//!
//! Timeouts here only keep a broken build from hanging the suite; no test measures time.

use std::{future::Future, process::Output, time::Duration};

use capprof::{
    api::{ApiClient, ClientError, ClientTarget, FailureKind, TracerHealth},
    capability::Capability,
    classify::CheckClass,
    profile::{EntryVerdict, Subject},
    recommend::Recommendation,
};
use capprof_proto::v1 as pb;
use capprof_tests::{
    api::{
        BLOG_ID, CACHE_ID, DB_ID, TestDaemon, WEB_ID, WEB_IMAGE, bind_port_80, capprof_binary,
        checks_of, chown_files, container, denied_ping, on_path,
    },
    ci,
};
use futures_util::{Stream, StreamExt};
use tonic::Code;

/// Fails the test instead of hanging it when something never arrives.
async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never arrived"))
}

/// A stream's next item; panics when it never arrives or the stream ends first.
async fn next_item<S: Stream + Unpin>(what: &str, stream: &mut S) -> S::Item {
    guarded(what, stream.next())
        .await
        .unwrap_or_else(|| panic!("the stream ended before {what}"))
}

async fn client(daemon: &TestDaemon) -> ApiClient {
    ApiClient::connect(&daemon.target())
        .await
        .expect("connecting")
}

fn web_service() -> Subject {
    Subject::Service {
        project: "shop".into(),
        service: "web".into(),
    }
}

fn names(recommendation: &Recommendation) -> Vec<&'static str> {
    recommendation.cap_add_names()
}

fn api_error(error: ClientError) -> (Code, Option<String>, String) {
    match error {
        ClientError::Api {
            code,
            reason,
            message,
        } => (code, reason, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selector_form_finds_the_profile() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    for (query, subject) in [
        (WEB_ID.to_owned(), Subject::Container { id: WEB_ID.into() }),
        ("3f2a1".to_owned(), Subject::Container { id: WEB_ID.into() }),
        (
            "shop-web-1".to_owned(),
            Subject::Container { id: WEB_ID.into() },
        ),
        ("shop/web".to_owned(), web_service()),
        ("service:shop/web".to_owned(), web_service()),
        (
            WEB_IMAGE.to_owned(),
            Subject::Image {
                name: WEB_IMAGE.into(),
            },
        ),
    ] {
        let recommendation = client.recommendation(&query).await.expect(&query);
        assert_eq!(recommendation.subject, subject, "{query}");
        assert_eq!(
            names(&recommendation),
            ["CHOWN", "NET_BIND_SERVICE"],
            "{query}"
        );
        assert_eq!(recommendation.total_checks, 12 + 2 + 340 + 1, "{query}");
        assert!(
            recommendation.ignored.contains_key(&CheckClass::Advisory),
            "{query}"
        );
        assert!(
            recommendation
                .ignored
                .contains_key(&CheckClass::RuntimeSetup),
            "{query}"
        );
        let bind = &recommendation.cap_add[1];
        assert_eq!(bind.capability, Capability::NetBindService);
        assert_eq!(
            bind.reason,
            "httpd called bind() → __inet_bind, 12×, first seen 2025-12-03 17:01:02 UTC"
        );
        assert_eq!(bind.evidence[0].stack[3], "__inet_bind+0x1ea");
    }

    use pb::profile_selector::Selector;
    for (selector, subject) in [
        (
            Selector::ContainerId(DB_ID.into()),
            Subject::Container { id: DB_ID.into() },
        ),
        (
            Selector::Service(pb::ServiceRef {
                project: "blog".into(),
                service: "web".into(),
            }),
            Subject::Service {
                project: "blog".into(),
                service: "web".into(),
            },
        ),
        (
            Selector::Image("postgres:16".into()),
            Subject::Image {
                name: "postgres:16".into(),
            },
        ),
        (Selector::Host(pb::HostRef {}), Subject::Host),
    ] {
        let recommendation = client
            .recommendation_for(pb::ProfileSelector {
                selector: Some(selector),
            })
            .await
            .expect("explicit selector");
        assert_eq!(recommendation.subject, subject);
    }
    // A running container with no check yet has an empty profile, not an error.
    let cache = client.recommendation("shop-cache-1").await.unwrap();
    assert_eq!(
        cache.subject,
        Subject::Container {
            id: CACHE_ID.into()
        }
    );
    assert_eq!(cache.total_checks, 0);
    assert_eq!(cache.info.names, ["shop-cache-1"]);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_ambiguous_names_get_their_own_codes_and_candidates() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;

    let error = client.recommendation("shop-wep-1").await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::NotFound);
    let (code, reason, message) = api_error(error);
    assert_eq!(
        (code, reason.as_deref()),
        (Code::NotFound, Some("not-found"))
    );
    assert!(
        message.contains("did you mean shop-web-1 (container 3f2a11bb22cc)"),
        "{message}"
    );

    let error = client.recommendation("3f2a").await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::NotFound);
    let (code, reason, message) = api_error(error);
    assert_eq!(
        (code, reason.as_deref()),
        (Code::InvalidArgument, Some("ambiguous"))
    );
    assert!(
        message.contains("3f2a11bb22cc (shop-web-1)")
            && message.contains("3f2a22bb22cc (shop-db-1)"),
        "{message}"
    );

    let (code, _, message) = api_error(client.recommendation("web").await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("blog/web, shop/web"), "{message}");

    let error = client.recommendation("").await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::BadRequest);
    let (code, reason, _) = api_error(error);
    assert_eq!(
        (code, reason.as_deref()),
        (Code::InvalidArgument, Some("invalid-argument"))
    );

    let error = client
        .recommendation_for(pb::ProfileSelector { selector: None })
        .await
        .unwrap_err();
    assert_eq!(api_error(error).0, Code::InvalidArgument);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_running_and_remembered_are_listed() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let all = client.containers(false).await.unwrap();
    let listed: Vec<(&str, bool, u64)> = all
        .iter()
        .map(|c| (c.name.as_str(), c.running, c.total_checks))
        .collect();
    assert_eq!(
        listed[0],
        ("shop-cache-1", true, 0),
        "running first: {listed:?}"
    );
    assert_eq!(all.len(), 4, "{listed:?}");
    let web = all.iter().find(|c| c.id == WEB_ID).unwrap();
    assert_eq!(web.compose_project.as_deref(), Some("shop"));
    assert_eq!(web.compose_service.as_deref(), Some("web"));
    assert_eq!(web.cap_add, ["CHOWN", "NET_BIND_SERVICE"]);
    assert!(!web.running);
    let running = client.containers(true).await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, CACHE_ID);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_daemon() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let status = client.status().await.unwrap();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.attach_mode(), pb::AttachMode::Tracepoint);
    assert_eq!(status.kernel, "6.18.0-test");
    assert_eq!(status.counters.unwrap().events_lost, 3);
    assert_eq!(status.skipped_modes[0].mode(), pb::AttachMode::Fentry);
    assert!(status.uptime_ms > 0);
    assert_eq!(status.tracer_health(), pb::TracerHealth::Collecting);
    daemon.health.send_replace(TracerHealth::Stopped {
        reason: "reading the maps failed".into(),
    });
    let status = client.status().await.unwrap();
    assert_eq!(status.tracer_health(), pb::TracerHealth::Stopped);
    assert_eq!(status.tracer_problem, "reading the maps failed");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_forgets_one_profile_and_tells_watchers() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let watch = client.watch("shop-db-1", false).await.unwrap();
    tokio::pin!(watch);
    let first = next_item("the first watch message", &mut watch)
        .await
        .unwrap();
    assert_eq!(names(&first), ["CHOWN"]);

    let (subject, existed) = client.reset("shop-db-1").await.unwrap();
    assert_eq!(subject, Subject::Container { id: DB_ID.into() });
    assert!(existed);
    let after = next_item("the watch message after the reset", &mut watch)
        .await
        .unwrap();
    assert!(after.cap_add.is_empty());
    assert_eq!(after.total_checks, 0);
    assert_eq!(
        client
            .recommendation("shop-db-1")
            .await
            .unwrap()
            .total_checks,
        0
    );
    // The merged service profile is a separate subject and stays.
    assert_eq!(
        names(&client.recommendation("shop/db").await.unwrap()),
        ["CHOWN"]
    );
    let (_, existed) = client.reset("shop-db-1").await.unwrap();
    assert!(!existed);
    let (code, ..) = api_error(client.reset("nope-nothing").await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_current_list_then_each_change() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let watch = client.watch("shop/web", false).await.unwrap();
    tokio::pin!(watch);
    let first = next_item("the first watch message", &mut watch)
        .await
        .unwrap();
    assert_eq!(first.subject, web_service());
    assert_eq!(names(&first), ["CHOWN", "NET_BIND_SERVICE"]);

    let web = container(WEB_ID, "shop-web-1", WEB_IMAGE, Some(("shop", "web")));
    // More of the same (the advice stays; whether the watcher looks before the next change is
    // up to the scheduler: the unit tests cover that counts alone send nothing), another
    // subject's change, then a check that changes the list: the next message has the new list.
    daemon.apply(&checks_of(&web, &[bind_port_80(5)]));
    let db = container(DB_ID, "shop-db-1", "postgres:16", Some(("shop", "db")));
    daemon.apply(&checks_of(&db, &[denied_ping(1)]));
    daemon.apply(&checks_of(&web, &[denied_ping(2)]));
    let second = next_item("the watch message after the change", &mut watch)
        .await
        .unwrap();
    assert_eq!(names(&second), ["CHOWN", "NET_BIND_SERVICE", "NET_RAW"]);
    assert_eq!(second.denied, [Capability::NetRaw]);
    assert_eq!(
        second.cap_add[1].evidence[0].count, 17,
        "the earlier count change is in it"
    );
    assert!(second.cap_add[2].was_denied);

    // With count updates, a count-only change is a message of its own.
    let counts = client.watch("shop/web", true).await.unwrap();
    tokio::pin!(counts);
    let current = next_item("the first counts message", &mut counts)
        .await
        .unwrap();
    daemon.apply(&checks_of(&web, &[chown_files(1)]));
    let updated = next_item("the counts message", &mut counts).await.unwrap();
    assert_eq!(names(&updated), names(&current));
    assert_eq!(updated.total_checks, current.total_checks + 1);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_an_unknown_name_fails_before_streaming() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let error = client
        .watch("shop-wbe-1", false)
        .await
        .err()
        .expect("refused");
    assert_eq!(api_error(error).0, Code::NotFound);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_checks_are_filtered_by_container_and_capability() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let checks = client
        .checks(Some("shop/web"), vec!["cap_net_bind_service".into()])
        .await
        .unwrap();
    tokio::pin!(checks);
    // Another service, the wrong capability, then the one that matches.
    daemon.send_live_check(Subject::Container { id: BLOG_ID.into() }, bind_port_80(1));
    daemon.send_live_check(Subject::Container { id: WEB_ID.into() }, chown_files(1));
    daemon.send_live_check(Subject::Container { id: WEB_ID.into() }, bind_port_80(7));
    let message = next_item("the matching check", &mut checks).await.unwrap();
    assert_eq!(message.missed, 0);
    let check = message.check.unwrap();
    assert_eq!(check.capability, "CAP_NET_BIND_SERVICE");
    assert_eq!(check.container_name, "shop-web-1");
    assert_eq!(check.count, 7);
    assert_eq!(check.verdict(), pb::Verdict::Granted);
    assert_eq!(check.syscall, "bind");

    // Unfiltered: everything, the host included.
    let all = client.checks(None, vec![]).await.unwrap();
    tokio::pin!(all);
    daemon.send_live_check(Subject::Host, denied_ping(1));
    let host = next_item("the host check", &mut all)
        .await
        .unwrap()
        .check
        .unwrap();
    assert_eq!(host.verdict(), pb::Verdict::Denied);
    assert!(matches!(
        host.subject.unwrap().kind,
        Some(pb::subject::Kind::Host(_))
    ));

    let error = client
        .checks(None, vec!["CAP_TELEPORT".into()])
        .await
        .err()
        .unwrap();
    let (code, _, message) = api_error(error);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("CAP_TELEPORT"), "{message}");
    assert!(EntryVerdict::Denied != EntryVerdict::Granted);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_need_a_collecting_tracer() {
    let daemon = TestDaemon::start().await;
    let mut client = client(&daemon).await;
    let watch = client.watch("shop/web", false).await.unwrap();
    tokio::pin!(watch);
    next_item("the first message", &mut watch).await.unwrap();
    daemon.health.send_replace(TracerHealth::KernelUnsupported {
        reason: "no kprobes, fentry or cap_capable tracepoint".into(),
    });
    let error = next_item("the end of the watch", &mut watch)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::KernelUnsupported);
    assert_eq!(api_error(error).0, Code::FailedPrecondition);

    let refused = client.checks(None, vec![]).await.err().unwrap();
    assert_eq!(refused.kind(), FailureKind::KernelUnsupported);
    // Stored profiles are still served.
    assert_eq!(
        names(&client.recommendation("shop/web").await.unwrap()),
        ["CHOWN", "NET_BIND_SERVICE"]
    );

    daemon.health.send_replace(TracerHealth::Stopped {
        reason: "the collector thread failed".into(),
    });
    let refused = client.watch("shop/web", false).await.err().unwrap();
    assert_eq!(refused.kind(), FailureKind::Unavailable);
    assert_eq!(api_error(refused).1.as_deref(), Some("tracer-stopped"));
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_removes_the_socket() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.socket.clone();
    let mut client = client(&daemon).await;
    let watch = client.watch("shop/web", false).await.unwrap();
    tokio::pin!(watch);
    next_item("the first message", &mut watch).await.unwrap();
    let checks = client.checks(None, vec![]).await.unwrap();
    tokio::pin!(checks);

    guarded("shutdown", daemon.stop())
        .await
        .expect("clean shutdown");
    let error = next_item("the end of the watch", &mut watch)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Unavailable);
    let (code, reason, _) = api_error(error);
    assert_eq!(
        (code, reason.as_deref()),
        (Code::Unavailable, Some("shutting-down"))
    );
    let error = next_item("the end of the checks", &mut checks)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Unavailable);
    assert!(!socket.exists(), "the socket is removed on shutdown");

    let error = ApiClient::connect(&ClientTarget::Unix(socket.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::DaemonNotRunning);
    assert!(error.to_string().contains("sudo capprof daemon"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_means_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capprof.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let error = ApiClient::connect(&ClientTarget::Unix(path.clone()))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Refused { .. }), "{error:?}");
    assert_eq!(error.kind(), FailureKind::DaemonNotRunning);
    assert!(
        error
            .to_string()
            .contains("start it with `sudo capprof daemon`")
    );
}

// ---- the `capprof` binary ----

/// Runs `capprof ARGS` against `socket` (as another user when `as_nobody`).
async fn capprof(socket: &std::path::Path, args: &[&str], as_nobody: bool) -> Option<Output> {
    let Some(binary) = capprof_binary() else {
        ci::skip_or_fail(
            "the capprof binary is not built (cargo build -p capprof, or set CAPPROF_BIN)",
        );
        return None;
    };
    let mut command = match as_nobody {
        true => {
            let mut command = tokio::process::Command::new("setpriv");
            command
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&binary);
            command
        }
        false => tokio::process::Command::new(&binary),
    };
    command
        .args(args)
        .env("CAPPROF_SOCKET", socket)
        .env_remove("CAPPROF_CONNECT")
        .kill_on_drop(true);
    Some(
        guarded("capprof to finish", command.output())
            .await
            .expect("running capprof"),
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_prints_every_format() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.socket.clone();
    let Some(table) = capprof(&socket, &["report", "shop/web"], false).await else {
        return;
    };
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    for expected in [
        "service shop/web: 355 capability checks recorded",
        "NET_BIND_SERVICE  httpd called bind() → __inet_bind, 12×",
        "Docker defaults it did not need (12 of 14)",
        "advisory (340 checks)",
        "runtime-setup (1 check):",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in\n{text}");
    }

    let json = capprof(
        &socket,
        &["report", "shop-web-1", "--format", "json"],
        false,
    )
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(
        json["cap_add"],
        serde_json::json!(["CHOWN", "NET_BIND_SERVICE"])
    );
    assert_eq!(
        json["capabilities"][1]["evidence"][0]["kernel_path"],
        "__inet_bind"
    );
    assert_eq!(json["subject"]["id"], WEB_ID);

    let yaml = capprof(&socket, &["report", "shop/web", "--format", "yaml"], false)
        .await
        .unwrap();
    let yaml: serde_json::Value = serde_yaml_ng::from_slice(&yaml.stdout).expect("YAML");
    assert_eq!(
        yaml["cap_add"],
        serde_json::json!(["CHOWN", "NET_BIND_SERVICE"])
    );

    let k8s = capprof(&socket, &["report", "shop/web", "--format", "k8s"], false)
        .await
        .unwrap();
    let k8s: serde_json::Value = serde_yaml_ng::from_slice(&k8s.stdout).expect("YAML");
    assert_eq!(
        k8s,
        serde_json::json!({"securityContext": {"capabilities": {
            "drop": ["ALL"], "add": ["CHOWN", "NET_BIND_SERVICE"]
        }}})
    );

    let flags = capprof(
        &socket,
        &["report", "shop/web", "--format", "docker-run"],
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        stdout(&flags),
        "--cap-drop ALL --cap-add CHOWN --cap-add NET_BIND_SERVICE\n"
    );

    let compose = capprof(
        &socket,
        &["report", "shop/web", "--format", "compose"],
        false,
    )
    .await
    .unwrap();
    assert_eq!(compose.status.code(), Some(0));
    let fragment = stdout(&compose);
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&fragment).expect("YAML");
    assert_eq!(
        parsed,
        serde_json::json!({"services": {"web": {
            "cap_drop": ["ALL"], "cap_add": ["CHOWN", "NET_BIND_SERVICE"]
        }}})
    );
    compose_round_trip(&fragment);
    daemon.stop().await.expect("clean shutdown");
}

/// docker-compose merges the fragment into a real Compose file and prints the result; its
/// `config` command needs no engine.
fn compose_round_trip(fragment: &str) {
    let Some(docker_compose) = on_path("docker-compose") else {
        ci::skip_or_fail("docker-compose is not installed (apt-get install docker-compose)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        "services:\n  web:\n    image: busybox\n    command: [\"httpd\", \"-f\", \"-p\", \"80\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("capprof.yml"), fragment).unwrap();
    let output = std::process::Command::new(docker_compose)
        .current_dir(dir.path())
        .args(["-f", "docker-compose.yml", "-f", "capprof.yml", "config"])
        .env("COMPOSE_PROJECT_NAME", "capprof-api-test")
        .output()
        .expect("running docker-compose");
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        stderr(&output)
    );
    let merged: serde_json::Value = serde_yaml_ng::from_slice(&output.stdout).expect("YAML");
    let web = &merged["services"]["web"];
    assert_eq!(web["image"], "busybox");
    assert_eq!(web["cap_drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        web["cap_add"],
        serde_json::json!(["CHOWN", "NET_BIND_SERVICE"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_have_their_documented_exit_codes() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.socket.clone();
    let Some(unknown) = capprof(&socket, &["report", "shop-wep-1"], false).await else {
        return;
    };
    assert_eq!(unknown.status.code(), Some(6), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("did you mean shop-web-1"),
        "{}",
        stderr(&unknown)
    );

    let help = capprof(&socket, &["report", "--help"], false)
        .await
        .unwrap();
    for documented in [
        "5   the capprof daemon is not running",
        "6   no container, service or image has that name",
        "7   permission denied on the daemon's socket",
    ] {
        assert!(stdout(&help).contains(documented), "{}", stdout(&help));
    }

    let ambiguous = capprof(&socket, &["report", "web"], false).await.unwrap();
    assert_eq!(ambiguous.status.code(), Some(6));
    assert!(
        stderr(&ambiguous).contains("blog/web, shop/web"),
        "{}",
        stderr(&ambiguous)
    );

    let ps = capprof(&socket, &["ps"], false).await.unwrap();
    assert_eq!(ps.status.code(), Some(0));
    let listing = stdout(&ps);
    assert!(listing.starts_with("CONTAINER"), "{listing}");
    assert!(
        listing.contains("shop-cache-1") && listing.contains("(no checks yet)"),
        "{listing}"
    );
    assert!(listing.contains("CHOWN,NET_BIND_SERVICE"), "{listing}");

    let status = capprof(&socket, &["status", "--format", "json"], false)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["attach_mode"], "tracepoint");
    assert_eq!(status["counters"]["events_lost"], 3);

    daemon.stop().await.expect("clean shutdown");
    let stopped = capprof(&socket, &["status"], false).await.unwrap();
    assert_eq!(stopped.status.code(), Some(5));
    assert!(
        stderr(&stopped).contains("not running")
            && stderr(&stopped).contains("sudo capprof daemon"),
        "{}",
        stderr(&stopped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_the_caller_may_not_open_is_permission_denied() {
    if !ci::require_root() {
        return;
    }
    if on_path("setpriv").is_none() {
        ci::skip_or_fail("setpriv (util-linux) is not installed");
        return;
    }
    let daemon = TestDaemon::start().await;
    daemon.open_directories();
    let socket = daemon.socket.clone();
    let Some(denied) = capprof(&socket, &["status"], true).await else {
        return;
    };
    assert_eq!(denied.status.code(), Some(7), "{}", stderr(&denied));
    assert!(
        stderr(&denied).contains("permission denied on")
            && stderr(&denied).contains("`capprof` group"),
        "{}",
        stderr(&denied)
    );
    // The same user with the socket opened to it gets through: it was the socket's mode.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let allowed = capprof(&socket, &["status"], true).await.unwrap();
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_plain_lines_when_not_a_terminal() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.socket.clone();
    let Some(binary) = capprof_binary() else {
        ci::skip_or_fail(
            "the capprof binary is not built (cargo build -p capprof, or set CAPPROF_BIN)",
        );
        return;
    };
    let mut child = tokio::process::Command::new(binary)
        .args(["watch", "shop/web"])
        .env("CAPPROF_SOCKET", &socket)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let first = guarded("the first line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.ends_with("service shop/web cap_add: CHOWN NET_BIND_SERVICE (355 checks)"),
        "{first}"
    );
    let web = container(WEB_ID, "shop-web-1", WEB_IMAGE, Some(("shop", "web")));
    daemon.apply(&checks_of(&web, &[denied_ping(1)]));
    let second = guarded("the second line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        second.contains("cap_add: CHOWN NET_BIND_SERVICE NET_RAW (356 checks)"),
        "{second}"
    );
    assert!(
        !second.contains('\x1b'),
        "no terminal escapes in plain output"
    );
    daemon.stop().await.expect("clean shutdown");
    let status = guarded("watch to exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(8), "the daemon went away: unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_the_report_in_place_on_a_terminal() {
    use tokio::io::AsyncReadExt;

    // `script` gives capprof a terminal (a pseudo-terminal) and passes on what it draws.
    let Some(script) = on_path("script") else {
        ci::skip_or_fail("`script` is not installed (apt-get install bsdutils)");
        return;
    };
    let Some(binary) = capprof_binary() else {
        ci::skip_or_fail(
            "the capprof binary is not built (cargo build -p capprof, or set CAPPROF_BIN)",
        );
        return;
    };
    let daemon = TestDaemon::start().await;
    let command = format!("{} watch shop/web", binary.display());
    let mut child = tokio::process::Command::new(script)
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("CAPPROF_SOCKET", &daemon.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut screen = String::new();
    // Reads what the terminal showed until `done` says it is there.
    let mut read_until = async |what: &str, done: &dyn Fn(&str) -> bool| {
        let mut buffer = [0u8; 4096];
        while !done(&screen) {
            let read = guarded(what, stdout.read(&mut buffer)).await.unwrap();
            assert!(read > 0, "the terminal closed before {what}: {screen:?}");
            screen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
        screen.clone()
    };
    const CLEAR: &str = "\x1b[H\x1b[2J";
    // The last drawing's `cap_add` section, once the sections after it have begun.
    let cap_add = |screen: &str| -> Option<Vec<String>> {
        let (_, drawing) = screen.rsplit_once(CLEAR)?;
        let (_, section) = drawing.split_once("cap_add (with cap_drop: [ALL]):\r\n")?;
        let (section, rest) = section.split_once("\r\n\r\n")?;
        rest.contains("Docker defaults").then_some(())?;
        Some(
            section
                .split("\r\n")
                .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
                .collect(),
        )
    };
    let first = read_until("the first drawing", &|screen| cap_add(screen).is_some()).await;
    assert!(first.contains("capprof watch, updated"), "{first:?}");
    assert_eq!(
        cap_add(&first).unwrap(),
        ["CHOWN", "NET_BIND_SERVICE"],
        "{first:?}"
    );
    let web = container(WEB_ID, "shop-web-1", WEB_IMAGE, Some(("shop", "web")));
    daemon.apply(&checks_of(&web, &[denied_ping(1)]));
    let second = read_until("the second drawing", &|screen| {
        screen.matches(CLEAR).count() >= 2 && cap_add(screen).is_some()
    })
    .await;
    assert_eq!(
        cap_add(&second).unwrap(),
        ["CHOWN", "NET_BIND_SERVICE", "NET_RAW"],
        "the whole report is drawn again on a cleared screen: {second:?}"
    );
    daemon.stop().await.expect("clean shutdown");
    let status = guarded("watch to exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(8), "the daemon went away: unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_the_filtered_live_checks() {
    let daemon = TestDaemon::start().await;
    let Some(binary) = capprof_binary() else {
        ci::skip_or_fail(
            "the capprof binary is not built (cargo build -p capprof, or set CAPPROF_BIN)",
        );
        return;
    };
    let mut child = tokio::process::Command::new(binary)
        .args([
            "events",
            "--container",
            "shop/web",
            "--cap",
            "NET_BIND_SERVICE",
            "--format",
            "json",
        ])
        .env("CAPPROF_SOCKET", &daemon.socket)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The stream is open once the server has subscribed to the daemon's checks.
    guarded("the events stream to open", async {
        while daemon.state.checks.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    daemon.send_live_check(Subject::Container { id: DB_ID.into() }, chown_files(1));
    daemon.send_live_check(Subject::Container { id: BLOG_ID.into() }, bind_port_80(1));
    daemon.send_live_check(Subject::Container { id: WEB_ID.into() }, bind_port_80(4));
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = guarded("the matching check", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["owner"], "shop-web-1");
    assert_eq!(event["container_id"], WEB_ID);
    assert_eq!(event["capability"], "CAP_NET_BIND_SERVICE");
    assert_eq!(event["verdict"], "granted");
    assert_eq!(event["count"], 4);
    daemon.stop().await.expect("clean shutdown");
    let status = guarded("events to exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(8));
}
