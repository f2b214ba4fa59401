//! `capprof verify` end to end, beyond the corpus: a test command that finds a missing
//! capability, a workload that hangs without one, and a Compose service verified through an
//! override file.

use std::{process::Command, time::Duration};

use capprof_tests::{
    api::on_path,
    ci,
    daemon::{DaemonProcess, cap_add},
    docker::{ContainerBuilder, engine_or_skip},
    workloads::workloads_image,
};

/// A guard against hangs, not a measurement.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn a_test_command_that_needs_more_fails_verification_and_names_what_to_add() {
    if !ci::require_root() {
        return;
    }
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let daemon = DaemonProcess::start(&engine);
    let service = ContainerBuilder::new(&engine, "verify-sleeper")
        .command(["sleep", "600"])
        .start()
        .expect("start the service");
    daemon.wait_for_report(service.name(), PATIENCE, |report| {
        report["total_checks"]
            .as_u64()
            .is_some_and(|total| total > 0)
    });

    // The test exercises something the profile never saw: a chown inside the container.
    let (code, report) = daemon.cli_json(&[
        "verify",
        service.name(),
        "--format",
        "json",
        "--",
        "sh",
        "-c",
        "docker exec \"$CAPPROF_VERIFY_CONTAINER\" sh -c 'touch /f && chown 1000 /f'",
    ]);
    assert_eq!(code, Some(9), "{report:#}");
    let run = &report["recommended_run"];
    assert_eq!(run["passed"], false, "{report:#}");
    assert_ne!(run["exit_code"], 0, "{report:#}");
    let denied: Vec<&str> = run["denied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|need| need["capability"].as_str())
        .collect();
    assert_eq!(denied, ["CHOWN"], "{report:#}");

    // The verification container is gone, and its checks are not in the service's profile.
    let left = engine
        .cli([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=io.capprof.verification-of={}", service.id()),
        ])
        .expect("docker ps");
    assert!(left.is_empty(), "verification containers left: {left}");
    let original = daemon
        .report(service.name())
        .expect("the original's report");
    assert!(cap_add(&original).is_empty(), "{original:#}");
    assert_eq!(
        service.inspect("{{.State.Running}}").expect("inspect"),
        "true",
        "the original keeps running"
    );
}

#[test]
fn a_workload_that_hangs_without_a_capability_is_stopped_and_counts_as_broken() {
    if !ci::require_root() {
        return;
    }
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let daemon = DaemonProcess::start(&engine);
    // Retries until its raw socket works, as services retry what they need.
    let retrier = ContainerBuilder::new(&engine, "verify-retrier")
        .command([
            "sh",
            "-c",
            "until ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; do sleep 0.2; done",
        ])
        .start()
        .expect("start the retrier");
    assert_eq!(retrier.wait().expect("the retrier exits"), 0);
    daemon.wait_for_report(retrier.name(), PATIENCE, |report| {
        cap_add(report) == ["NET_RAW"]
    });

    let (code, report) = daemon.cli_json(&[
        "verify",
        retrier.name(),
        "--leave-one-out",
        "--timeout",
        "5",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["recommended_run"]["timed_out"], false, "{report:#}");
    let without = &report["leave_one_out"][0]["run"];
    assert_eq!(without["timed_out"], true, "{report:#}");
    assert_eq!(without["passed"], false, "{report:#}");
    let left = engine
        .cli([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=io.capprof.verification-of={}", retrier.id()),
        ])
        .expect("docker ps");
    assert!(left.is_empty(), "the stopped run is removed too: {left}");
}

#[test]
fn a_compose_service_is_verified_through_an_override_file() {
    if !ci::require_root() {
        return;
    }
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(docker_compose) = on_path("docker-compose") else {
        ci::skip_or_fail("docker-compose is not installed (apt-get install docker-compose)");
        return;
    };
    let Some(image) = ci::require(workloads_image(&engine), "cannot build the corpus image") else {
        return;
    };
    let daemon = DaemonProcess::start(&engine);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("docker-compose.yml");
    // No network of its own (network_mode: none), so Compose creates none on the host.
    std::fs::write(
        &file,
        format!(
            "services:\n  pinger:\n    image: {image}\n    network_mode: none\n    command: [\"ping\", \"-c\", \"1\", \"-W\", \"2\", \"127.0.0.1\"]\n"
        ),
    )
    .expect("write the Compose file");
    let project = format!("capprofverify{}", std::process::id());
    let compose = |args: &[&str]| {
        Command::new(&docker_compose)
            .arg("--file")
            .arg(&file)
            .args(["--project-name", &project])
            .args(args)
            .env("DOCKER_HOST", engine.docker_host())
            .output()
            .expect("run docker-compose")
    };
    let up = compose(&["up", "--exit-code-from", "pinger", "pinger"]);
    let cleanup = scopeguard(|| {
        compose(&["down", "--volumes"]);
    });
    assert!(up.status.success(), "{up:?}");
    let target = format!("{project}/pinger");
    daemon.wait_for_report(&target, PATIENCE, |report| cap_add(report) == ["NET_RAW"]);

    let file_arg = file.to_string_lossy().into_owned();
    let (code, report) = daemon.cli_json(&[
        "verify",
        &target,
        "--compose",
        &file_arg,
        "--leave-one-out",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["cap_add"], serde_json::json!(["NET_RAW"]));
    assert_eq!(report["recommended_run"]["passed"], true, "{report:#}");
    assert_eq!(report["leave_one_out"][0]["capability"], "NET_RAW");
    assert_eq!(report["leave_one_out"][0]["run"]["passed"], false);
    let container = report["recommended_run"]["container"]
        .as_str()
        .unwrap_or_default();
    assert!(
        container.starts_with(&format!("{project}-capprof-verify")),
        "runs in a project of its own: {container}"
    );
    // Nothing of the verification project is left, and the original service's profile is as it was.
    let left = engine
        .cli([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=com.docker.compose.project={project}-capprof-verify"),
        ])
        .expect("docker ps");
    assert!(left.is_empty(), "verification containers left: {left}");
    let original = daemon.report(&target).expect("the service's report");
    assert_eq!(
        original["info"]["containers"].as_array().map(Vec::len),
        Some(1),
        "{original:#}"
    );
    drop(cleanup);
}

/// Runs `f` when dropped, also when an assertion fails first.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
