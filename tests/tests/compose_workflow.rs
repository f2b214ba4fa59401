//! The workflow end to end, with the real binary, the real kernel, a real dockerd and Debian's
//! docker-compose (Compose v1): profile the bundled example project (a web server on port 80
//! under `ip_unprivileged_port_start=1024`, and a client that needs nothing) while
//! `docker-compose up` runs, write the result into its Compose file, bring it up again with the
//! hardened file, and gate it with `compose check`.
//!
//! Golden files live in `tests/golden/`; `CAPPROF_UPDATE_GOLDEN=1` rewrites them from this run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use capprof_tests::{
    api::{capprof_binary, on_path},
    ci,
    daemon::DaemonProcess,
    docker::{DockerEngine, EngineUse, engine_or_skip},
};

/// What the example's services need: web chowns its site, binds port 80, drops to user 33 and
/// stops its httpd (another user's process) on SIGTERM; the client needs nothing.
const WEB_NEEDS: [&str; 5] = ["CHOWN", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID"];

static NEXT: AtomicU32 = AtomicU32::new(0);

fn example_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capprof/examples/webapp/docker-compose.yml")
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// A copy of the example project in a directory of its own (its name is the Compose project's
/// name), with a private capprof state and tracer pin directory. Dropping it takes the project
/// down (`docker-compose down -v`), unloads a tracer left pinned and removes the directory.
struct Project {
    _dir: tempfile::TempDir,
    name: String,
    root: PathBuf,
    file: PathBuf,
    docker_host: String,
    docker_compose: PathBuf,
    capprof: PathBuf,
    pin_dir: PathBuf,
}

impl Project {
    fn new(engine: &DockerEngine, docker_compose: PathBuf) -> Self {
        let capprof = capprof_binary()
            .expect("the capprof binary is built (cargo build -p capprof) or CAPPROF_BIN is set");
        let dir = tempfile::tempdir().expect("temporary directory");
        let name = format!(
            "webapp{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root = dir.path().join(&name);
        std::fs::create_dir(&root).expect("project directory");
        let file = root.join("docker-compose.yml");
        std::fs::copy(example_file(), &file).expect("copy the example project");
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/capprof-test-{name}")),
            _dir: dir,
            name,
            root,
            file,
            docker_host: engine.docker_host().to_owned(),
            docker_compose,
            capprof,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join(".capprof-state")
    }

    /// `capprof ARGS` in the project's directory, against `socket` (a path where no daemon
    /// listens makes `profile` trace in-process and `compose` read the state directory).
    fn capprof(&self, args: &[&str], socket: &Path) -> Output {
        Command::new(&self.capprof)
            .args(args)
            .current_dir(&self.root)
            .env("DOCKER_HOST", &self.docker_host)
            .env("CAPPROF_STATE_DIR", self.state_dir())
            .env("CAPPROF_PIN_DIR", &self.pin_dir)
            .env("CAPPROF_SOCKET", socket)
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_FILE")
            .output()
            .expect("run capprof")
    }

    fn no_daemon(&self) -> PathBuf {
        self.root.join("no-daemon.sock")
    }

    /// The `docker-compose` command line for this project's file, as a user types it.
    fn compose_command(&self, args: &[&str]) -> Vec<String> {
        [self.docker_compose.to_string_lossy().as_ref(), "-f"]
            .into_iter()
            .map(str::to_owned)
            .chain([self.file.display().to_string()])
            .chain(args.iter().map(|arg| (*arg).to_owned()))
            .collect()
    }

    fn compose(&self, args: &[&str]) -> Output {
        let command = self.compose_command(args);
        Command::new(&command[0])
            .args(&command[1..])
            .current_dir(&self.root)
            .env("DOCKER_HOST", &self.docker_host)
            .env_remove("COMPOSE_PROJECT_NAME")
            .output()
            .expect("run docker-compose")
    }

    /// `capprof profile --compose FILE -- docker-compose -f FILE up --abort-on-container-exit`,
    /// and the profiles it printed (to a file: the command's output shares stdout).
    fn profile(&self, socket: &Path, format: &str) -> (Output, String) {
        let up = self.compose_command(&["up", "--abort-on-container-exit"]);
        let file = self.file.display().to_string();
        let result = self.root.join("profiles.out");
        let result_arg = result.display().to_string();
        let mut args = vec!["profile", "--compose", &file, "--format", format];
        args.extend(["--output", &result_arg, "--"]);
        args.extend(up.iter().map(String::as_str));
        let output = self.capprof(&args, socket);
        let printed = std::fs::read_to_string(&result).unwrap_or_default();
        (output, printed)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.file).expect("read the Compose file")
    }

    /// `docker inspect` of the service's container.
    fn inspect(&self, engine: &EngineUse, service: &str, format: &str) -> String {
        let id = text(&self.compose(&["ps", "-q", service]).stdout)
            .trim()
            .to_owned();
        assert!(!id.is_empty(), "no container for service {service}");
        engine
            .cli(["inspect", "--format", format, &id])
            .expect("docker inspect")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let down = self.compose(&["down", "-v", "--remove-orphans"]);
        if !down.status.success() {
            eprintln!("docker-compose down failed: {}", describe(&down));
        }
        if self.pin_dir.exists() {
            let _ = Command::new(&self.capprof)
                .args(["unload", "--pin-dir"])
                .arg(&self.pin_dir)
                .output();
        }
    }
}

/// The engine, root and docker-compose, or `None` after saying why not.
fn prerequisites() -> Option<(EngineUse, PathBuf)> {
    if !ci::require_root() {
        return None;
    }
    let engine = engine_or_skip()?;
    let Some(docker_compose) = on_path("docker-compose") else {
        ci::skip_or_fail("docker-compose is not installed (apt-get install docker-compose)");
        return None;
    };
    Some((engine, docker_compose))
}

/// The reason comment of each capability line masked: reasons name kernel functions, which
/// differ between kernels; everything else must match the golden file byte for byte.
fn mask_reasons(yaml: &str) -> String {
    yaml.split_inclusive('\n')
        .map(|line| {
            let item = line.trim_start().starts_with("- ");
            match (item, line.find("  # ")) {
                (true, Some(at)) => {
                    let end = if line.ends_with('\n') { "\n" } else { "" };
                    format!("{}  # <reason>{end}", &line[..at])
                }
                _ => line.to_owned(),
            }
        })
        .collect()
}

fn assert_matches_golden(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("CAPPROF_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(
        mask_reasons(actual),
        mask_reasons(&expected),
        "{name} differs from the golden file (CAPPROF_UPDATE_GOLDEN=1 rewrites it)"
    );
}

/// The lines of `before` are all in `after`, in order and unchanged: apply only inserted.
fn assert_only_inserted(before: &str, after: &str) -> Vec<String> {
    let mut inserted = Vec::new();
    let mut originals = before.split_inclusive('\n').peekable();
    for line in after.split_inclusive('\n') {
        if originals.peek() == Some(&line) {
            originals.next();
        } else {
            inserted.push(line.to_owned());
        }
    }
    assert_eq!(
        originals.next(),
        None,
        "a line of the original file is missing or changed after apply:\n{after}"
    );
    inserted
}

fn services_of(json: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    json[0]["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|service| {
            (
                service["service"].as_str().unwrap_or_default().to_owned(),
                service["cap_add"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn profile_apply_up_again_and_check_without_a_daemon() {
    let Some((engine, docker_compose)) = prerequisites() else {
        return;
    };
    let project = Project::new(&engine, docker_compose);
    let original = project.read();

    // 1. Profile while the project's own test (the client) runs; no daemon: capprof embeds one.
    let (profiled, printed) = project.profile(&project.no_daemon(), "json");
    assert!(profiled.status.success(), "{}", describe(&profiled));
    let stderr = text(&profiled.stderr);
    assert!(
        stderr.contains("no capprof daemon is running: tracing in this process"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("project: {} (named by", project.name)),
        "{stderr}"
    );
    assert!(
        text(&profiled.stdout).contains("client: fetched the home page"),
        "the command's output passes through: {}",
        describe(&profiled)
    );
    let json: serde_json::Value = serde_json::from_str(&printed)
        .unwrap_or_else(|error| panic!("{error}: {printed}\n{}", describe(&profiled)));
    assert_eq!(json[0]["project"], project.name.as_str());
    assert_eq!(
        services_of(&json),
        [
            ("web".to_owned(), WEB_NEEDS.map(str::to_owned).to_vec()),
            ("client".to_owned(), vec![])
        ],
        "{json:#}"
    );
    assert!(
        !project.pin_dir.exists(),
        "the embedded tracer is detached when the run ends"
    );

    // 2. The dry run shows the diff and writes nothing.
    let dry = project.capprof(
        &["compose", "apply", "docker-compose.yml", "--dry-run"],
        &project.no_daemon(),
    );
    assert!(dry.status.success(), "{}", describe(&dry));
    let diff = text(&dry.stdout);
    assert!(diff.contains("+    cap_drop: [ALL]"), "{diff}");
    assert!(
        diff.contains("+      - NET_BIND_SERVICE  # httpd: bind()"),
        "{diff}"
    );
    assert_eq!(project.read(), original, "--dry-run must not write");

    // 3. Refusals leave the file alone.
    let unknown = project.capprof(
        &["compose", "apply", "docker-compose.yml", "--service", "wbe"],
        &project.no_daemon(),
    );
    assert_eq!(unknown.status.code(), Some(6), "{}", describe(&unknown));
    assert!(
        text(&unknown.stderr).contains("services there: web, client"),
        "{}",
        describe(&unknown)
    );
    let broken = project.root.join("broken.yml");
    std::fs::write(&broken, "services:\n  web:\n    image: [unclosed\n").unwrap();
    let malformed = project.capprof(
        &["compose", "apply", "broken.yml", "-p", &project.name],
        &project.no_daemon(),
    );
    assert_eq!(malformed.status.code(), Some(1), "{}", describe(&malformed));
    assert!(
        text(&malformed.stderr).contains("the YAML is malformed"),
        "{}",
        describe(&malformed)
    );
    assert_eq!(project.read(), original);

    // 4. Apply: only insertions, every comment and unrelated line as it was.
    let applied = project.capprof(
        &["compose", "apply", "docker-compose.yml"],
        &project.no_daemon(),
    );
    assert!(applied.status.success(), "{}", describe(&applied));
    let applied_text = text(&applied.stdout);
    assert!(
        applied_text.contains("updated    web (") && applied_text.contains("updated    client ("),
        "{applied_text}"
    );
    let hardened = project.read();
    assert_matches_golden("webapp.applied.yml", &hardened);
    let inserted = assert_only_inserted(&original, &hardened);
    assert_eq!(inserted.len(), 1 + 1 + WEB_NEEDS.len() + 1, "{inserted:?}");
    for (needed, comment) in [
        ("NET_BIND_SERVICE", "httpd: bind()"),
        ("SETUID", "httpd: setuid()"),
        ("SETGID", "httpd: set"),
        ("KILL", ": kill()"),
        ("CHOWN", "chown()"),
    ] {
        assert!(
            inserted
                .iter()
                .any(|line| line.contains(&format!("- {needed} ")) && line.contains(comment)),
            "no `{needed}` line with `{comment}` in {inserted:?}"
        );
    }

    // 5. The hardened project still works, and Docker really runs it without the rest.
    let again = project.compose(&["up", "--abort-on-container-exit"]);
    assert!(again.status.success(), "{}", describe(&again));
    assert!(
        text(&again.stdout).contains("client: fetched the home page"),
        "{}",
        describe(&again)
    );
    assert_eq!(
        project.inspect(
            &engine,
            "web",
            "{{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}}"
        ),
        format!("[ALL] [{}]", WEB_NEEDS.join(" "))
    );
    assert_eq!(
        project.inspect(
            &engine,
            "client",
            "{{.HostConfig.CapDrop}} {{len .HostConfig.CapAdd}}"
        ),
        "[ALL] 0"
    );

    // 6. The CI gate passes on the applied file and fails on the original.
    let check = project.capprof(
        &["compose", "check", "docker-compose.yml"],
        &project.no_daemon(),
    );
    assert!(check.status.success(), "{}", describe(&check));
    let report = text(&check.stdout);
    assert!(
        report.contains("ok        web") && report.contains("ok        client"),
        "{report}"
    );
    let before = project.root.join("before.yml");
    std::fs::write(&before, &original).unwrap();
    let drifted = project.capprof(
        &["compose", "check", "before.yml", "-p", &project.name],
        &project.no_daemon(),
    );
    assert_eq!(drifted.status.code(), Some(11), "{}", describe(&drifted));
    assert!(
        text(&drifted.stdout).contains("does not drop ALL"),
        "{}",
        describe(&drifted)
    );
}

#[test]
fn check_fails_on_a_file_granting_a_capability_never_used() {
    let Some((engine, docker_compose)) = prerequisites() else {
        return;
    };
    let project = Project::new(&engine, docker_compose);
    // Two runs without a daemon: the second merges into the first's stored profiles.
    for run in 1..=2 {
        let (profiled, printed) = project.profile(&project.no_daemon(), "json");
        assert!(
            profiled.status.success(),
            "run {run}: {}",
            describe(&profiled)
        );
        let json: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
        assert_eq!(
            json[0]["services"][0]["info"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(run),
            "run {run}: {json:#}"
        );
        let down = project.compose(&["down", "-v"]);
        assert!(down.status.success(), "{}", describe(&down));
    }
    let applied = project.capprof(
        &["compose", "apply", "docker-compose.yml"],
        &project.no_daemon(),
    );
    assert!(applied.status.success(), "{}", describe(&applied));

    // A hand edit grants web one more capability, lower case with the CAP_ prefix.
    let hardened = project.read();
    let extra = hardened.replacen("    cap_add:\n", "    cap_add:\n      - cap_net_admin\n", 1);
    assert_ne!(extra, hardened);
    std::fs::write(&project.file, &extra).unwrap();

    let check = project.capprof(
        &["compose", "check", "docker-compose.yml"],
        &project.no_daemon(),
    );
    assert_eq!(check.status.code(), Some(11), "{}", describe(&check));
    let report = text(&check.stdout);
    assert!(report.contains("MISMATCH  web"), "{report}");
    assert!(
        report.contains("grants NET_ADMIN but never used it: remove from cap_add"),
        "{report}"
    );
    assert!(report.contains("ok        client"), "{report}");

    let json = project.capprof(
        &["compose", "check", "docker-compose.yml", "--format", "json"],
        &project.no_daemon(),
    );
    assert_eq!(json.status.code(), Some(11), "{}", describe(&json));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["clean"], false);
    assert_eq!(json["services"][0]["service"], "web");
    assert_eq!(
        json["services"][0]["extra"],
        serde_json::json!(["CAP_NET_ADMIN"])
    );
    assert_eq!(json["services"][1]["clean"], true);

    // apply puts it right again.
    let fixed = project.capprof(
        &["compose", "apply", "docker-compose.yml"],
        &project.no_daemon(),
    );
    assert!(fixed.status.success(), "{}", describe(&fixed));
    assert_eq!(project.read(), hardened);

    // An override file (`-f`) that makes web privileged and gives the client a capability in
    // an inline list: Compose merges both files, and so do check and apply.
    let ci = project.root.join("ci.yml");
    std::fs::write(
        &ci,
        "services:\n  web:\n    privileged: true\n  client:\n    cap_add: [NET_RAW]  # for ping\n",
    )
    .unwrap();
    let two_files = ["-f", "docker-compose.yml", "-f", "ci.yml"];
    let check = project.capprof(
        &[&["compose", "check"][..], &two_files].concat(),
        &project.no_daemon(),
    );
    assert_eq!(check.status.code(), Some(11), "{}", describe(&check));
    let report = text(&check.stdout);
    assert!(
        report.contains("privileged: true grants every capability"),
        "{report}"
    );
    assert!(
        report.contains("grants NET_RAW but never used it"),
        "{report}"
    );
    let applied = project.capprof(
        &[&["compose", "apply", "--remove-privileged"][..], &two_files].concat(),
        &project.no_daemon(),
    );
    assert!(applied.status.success(), "{}", describe(&applied));
    assert_eq!(project.read(), hardened, "the base file needed no change");
    let override_now = std::fs::read_to_string(&ci).unwrap();
    assert!(
        !override_now.contains("privileged") && !override_now.contains("NET_RAW"),
        "{override_now}"
    );
    let check = project.capprof(
        &[&["compose", "check"][..], &two_files].concat(),
        &project.no_daemon(),
    );
    assert!(check.status.success(), "{}", describe(&check));
}

#[test]
fn runs_through_a_running_daemon_merge_and_feed_compose_apply() {
    let Some((engine, docker_compose)) = prerequisites() else {
        return;
    };
    let daemon = DaemonProcess::start(&engine);
    let project = Project::new(&engine, docker_compose);
    let socket = daemon.socket();

    for run in 1..=2 {
        let (profiled, table) = project.profile(&socket, "table");
        assert!(
            profiled.status.success(),
            "run {run}: {}",
            describe(&profiled)
        );
        let stderr = text(&profiled.stderr);
        assert!(
            stderr.contains("profiling with the running capprof daemon"),
            "{stderr}"
        );
        assert!(
            table.contains(&format!("service {}/web:", project.name)),
            "{table}"
        );
        assert!(table.contains("cap_add (with cap_drop: [ALL]):"), "{table}");
        assert!(
            table.contains("NET_BIND_SERVICE  httpd called bind()"),
            "{table}"
        );
        assert!(
            table.contains(&format!("service {}/client:", project.name))
                && table.contains("cap_add: none."),
            "{table}"
        );
        // Each run's containers are new: `up` recreates them after `down`.
        let down = project.compose(&["down", "-v"]);
        assert!(down.status.success(), "{}", describe(&down));
    }
    assert!(
        !project.state_dir().exists(),
        "with a daemon running, profile keeps nothing of its own"
    );

    let merged = daemon
        .report(&format!("{}/web", project.name))
        .expect("the daemon has the service's profile");
    assert_eq!(
        merged["info"]["containers"].as_array().map(Vec::len),
        Some(2),
        "both runs' containers are in one service profile: {merged:#}"
    );

    let applied = project.capprof(&["compose", "apply", "docker-compose.yml"], &socket);
    assert!(applied.status.success(), "{}", describe(&applied));
    assert!(
        text(&applied.stderr).contains("profiles from the capprof daemon"),
        "{}",
        describe(&applied)
    );
    let check = project.capprof(&["compose", "check", "docker-compose.yml"], &socket);
    assert!(check.status.success(), "{}", describe(&check));
}

#[test]
fn profile_exits_with_the_commands_status() {
    if !ci::require_root() {
        return;
    }
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let capprof = capprof_binary().expect("the capprof binary is built");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(
        "{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // A project of its own: other tests' projects may run meanwhile, and the tracer sees them.
    let project = format!("nothing{tag}");
    let run = |command: &[&str]| {
        Command::new(&capprof)
            .args(["profile", "--no-progress", "--project", &project, "--"])
            .args(command)
            .current_dir(dir.path())
            .env("DOCKER_HOST", engine.docker_host())
            .env("CAPPROF_STATE_DIR", dir.path().join("state"))
            .env(
                "CAPPROF_PIN_DIR",
                format!("/sys/fs/bpf/capprof-test-status{tag}"),
            )
            .env("CAPPROF_SOCKET", dir.path().join("no-daemon.sock"))
            .output()
            .expect("run capprof")
    };
    let failed = run(&["sh", "-c", "exit 3"]);
    assert_eq!(failed.status.code(), Some(3), "{}", describe(&failed));
    let killed = run(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        killed.status.code(),
        Some(128 + 15),
        "{}",
        describe(&killed)
    );
    let missing = run(&["/nonexistent/command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", describe(&missing));
    assert!(
        text(&missing.stderr).contains("cannot start `/nonexistent/command`"),
        "{}",
        describe(&missing)
    );
    let fine = run(&["true"]);
    assert!(fine.status.success(), "{}", describe(&fine));
    assert!(
        text(&fine.stdout).contains("No Compose service was profiled"),
        "{}",
        describe(&fine)
    );
}

#[test]
fn on_a_terminal_the_progress_line_stays_below_the_commands_output() {
    if !ci::require_root() {
        return;
    }
    // `script` gives capprof a terminal (a pseudo-terminal) and records what it draws.
    let Some(script) = on_path("script") else {
        ci::skip_or_fail("`script` is not installed (apt-get install bsdutils)");
        return;
    };
    let capprof = capprof_binary().expect("the capprof binary is built");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(
        "{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let command = format!(
        "{} profile --project terminal{tag} -- sh -c 'echo first line; sleep 2.5; printf \"no newline\"; sleep 1.5; echo; echo last line'",
        capprof.display()
    );
    let output = Command::new(script)
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(dir.path())
        .env("CAPPROF_STATE_DIR", dir.path().join("state"))
        .env(
            "CAPPROF_PIN_DIR",
            format!("/sys/fs/bpf/capprof-test-tty{tag}"),
        )
        .env("CAPPROF_SOCKET", dir.path().join("no-daemon.sock"))
        .output()
        .expect("run script");
    assert!(output.status.success(), "{}", describe(&output));
    let screen = text(&output.stdout);
    // The line is drawn in place (carriage return, erase line)...
    assert!(screen.contains("\r\x1b[2Kcapprof: 1s  "), "{screen:?}");
    // ...and erased before the command writes: each of its lines starts on a fresh or a
    // cleared line and is whole.
    for line in ["first line\r\n", "no newline\r\n", "last line\r\n"] {
        let at = screen
            .find(line)
            .unwrap_or_else(|| panic!("`{line:?}` is not whole in {screen:?}"));
        assert!(
            screen[..at].ends_with('\n') || screen[..at].ends_with("\r\x1b[2K"),
            "`{line:?}` follows the progress line: {screen:?}"
        );
    }
}
