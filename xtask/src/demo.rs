//! `cargo xtask demo`: the whole workflow on the bundled example project
//! (`capprof/examples/webapp`: a web server on port 80 and a client), from nothing to a
//! hardened Compose file.
//!
//! 1. `cargo xtask setup` (packages, bpf-linker, kernel features, release build, doctor);
//! 2. builds `capprof` and `capprof-with-docker` (release);
//! 3. runs the steps below inside `capprof-with-docker`, which uses the Docker engine that
//!    answers, or starts the test harness's own dockerd (no bridge, no iptables rules) and
//!    stops it afterwards, exactly as the integration tests do, with the busybox image built;
//! 4. the steps, in a copy of the example in a temporary directory: `capprof profile -- docker-compose
//!    up`, `capprof compose apply`, `docker-compose up` again with the hardened file,
//!    `capprof compose check`, and the diff of the Compose file;
//! 5. removes the copy (`docker-compose down -v` after each `up`).
//!
//! The demo keeps its profiles in its temporary directory and traces in-process
//! (`CAPPROF_STATE_DIR` and `CAPPROF_SOCKET` point there), so a capprof daemon that may run on
//! the machine neither helps nor sees it, and nothing stays behind.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{
    process::describe,
    setup::{self, SetupOptions},
    workspace::{Workspace, find_on_path, is_root},
};

const HELPER: &str = "capprof-with-docker";
const EXAMPLE: &str = "capprof/examples/webapp";
const PROJECT_DIR: &str = "webapp";

#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct DemoOptions {
    /// Skip `cargo xtask setup` (the packages, kernel and `capprof doctor` checks).
    #[arg(long)]
    pub no_setup: bool,
    /// Keep the demo's directory (the hardened project and its profiles) and say where it is.
    #[arg(long)]
    pub keep: bool,
}

/// The steps run inside `capprof-with-docker`; not for people.
#[derive(Clone, Debug, clap::Args)]
pub struct StepsArgs {
    /// The capprof binary.
    #[arg(long)]
    capprof: PathBuf,
    /// The demo's directory: the project copy is in `webapp/`, the profiles in `state/`.
    #[arg(long)]
    dir: PathBuf,
}

pub fn run(workspace: &Workspace, options: DemoOptions) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo traces the kernel and may start dockerd: run it as root \
             (sudo -E env PATH=\"$PATH\" cargo xtask demo)"
        );
    }
    if find_on_path("docker-compose").is_none() {
        bail!("docker-compose is not installed: apt-get install docker-compose");
    }
    if !options.no_setup {
        banner("cargo xtask setup");
        setup::run(workspace, SetupOptions::default())?;
    }
    build(workspace)?;

    let dir = std::env::temp_dir().join(format!("capprof-demo-{}", std::process::id()));
    let project = dir.join(PROJECT_DIR);
    std::fs::create_dir_all(&project)
        .with_context(|| format!("cannot create {}", project.display()))?;
    let example = workspace.root.join(EXAMPLE).join("docker-compose.yml");
    std::fs::copy(&example, project.join("docker-compose.yml"))
        .with_context(|| format!("cannot copy {}", example.display()))?;

    let mut steps = Command::new(workspace.release_binary(HELPER));
    steps
        .arg("--")
        .arg(std::env::current_exe().context("locating xtask itself")?)
        .arg("demo-steps")
        .arg("--capprof")
        .arg(workspace.release_binary("capprof"))
        .arg("--dir")
        .arg(&dir);
    let status = steps
        .status()
        .with_context(|| format!("cannot run `{}`", describe(&steps)))?;
    if options.keep {
        println!(
            "\nkept {} (the hardened project in {PROJECT_DIR}/, its profiles in state/)",
            dir.display()
        );
    } else {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(125) => bail!("no Docker engine for the demo (the message above says why)"),
        _ => bail!("the demo failed ({status}); the output above says where"),
    }
}

fn build(workspace: &Workspace) -> anyhow::Result<()> {
    let mut build = workspace.cargo();
    build
        .args(["build", "--quiet", "--release"])
        .args(["-p", "capprof", "-p", "capprof-tests"])
        .args(["--bin", "capprof", "--bin", HELPER])
        // The binary must carry the eBPF program.
        .env_remove("AYA_BUILD_SKIP");
    banner(&describe(&build));
    let status = build
        .status()
        .with_context(|| format!("cannot run `{}`", describe(&build)))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); `cargo xtask setup` checks the toolchain",
            describe(&build)
        );
    }
    Ok(())
}

fn banner(what: &str) {
    println!("\n==> {what}");
}

/// Runs the workflow; the Docker engine is in `DOCKER_HOST`.
pub fn steps(args: &StepsArgs) -> anyhow::Result<()> {
    let project = args.dir.join(PROJECT_DIR);
    let demo = Demo {
        capprof: args.capprof.clone(),
        project: project.clone(),
        state: args.dir.join("state"),
        socket: args.dir.join("no-daemon.sock"),
        pins: PathBuf::from(format!("/sys/fs/bpf/capprof-demo-{}", std::process::id())),
    };
    println!(
        "\nThe example project {EXAMPLE}/docker-compose.yml, copied to {}.\n\
         Docker engine: {}.\n\
         No capprof daemon is used (CAPPROF_SOCKET points where none listens), so capprof\n\
         traces in-process; profiles are kept in {} (CAPPROF_STATE_DIR).",
        project.display(),
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the default".to_owned()),
        demo.state.display(),
    );
    let _cleanup = Cleanup(&demo);
    let original = std::fs::read_to_string(project.join("docker-compose.yml"))
        .context("reading the project's Compose file")?;
    std::fs::write(project.join("docker-compose.yml.orig"), &original)
        .context("keeping a copy of the original Compose file")?;

    demo.capprof(&[
        "profile",
        "--",
        "docker-compose",
        "up",
        "--abort-on-container-exit",
    ])?;
    demo.quietly(&["docker-compose", "down", "-v"])?;
    demo.capprof(&["compose", "apply", "docker-compose.yml"])?;
    demo.run(&["docker-compose", "up", "--abort-on-container-exit"])?;
    demo.run(&[
        "docker",
        "inspect",
        "--format",
        "{{.Name}}: cap_drop {{.HostConfig.CapDrop}}, cap_add {{.HostConfig.CapAdd}}",
        "webapp_web_1",
        "webapp_client_1",
    ])?;
    demo.quietly(&["docker-compose", "down", "-v"])?;
    demo.capprof(&["compose", "check", "docker-compose.yml"])?;
    println!("\nThe hardened Compose file, against the original:");
    // diff exits 1 when the files differ, which they must.
    let shown = demo.show(&[
        "diff",
        "-u",
        "docker-compose.yml.orig",
        "docker-compose.yml",
    ]);
    match shown?.code() {
        Some(1) => Ok(()),
        Some(0) => bail!("compose apply changed nothing"),
        _ => bail!("diff failed"),
    }
}

struct Demo {
    capprof: PathBuf,
    project: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    /// The in-process tracer's bpffs directory: the demo's own, so that it never resumes a
    /// tracer a daemon left pinned. capprof detaches it when the run ends.
    pins: PathBuf,
}

impl Demo {
    fn command(&self, args: &[&str]) -> Command {
        let program = match args[0] {
            "capprof" => self.capprof.as_os_str(),
            other => other.as_ref(),
        };
        let mut command = Command::new(program);
        command
            .args(&args[1..])
            .current_dir(&self.project)
            .env("CAPPROF_STATE_DIR", &self.state)
            .env("CAPPROF_SOCKET", &self.socket)
            .env("CAPPROF_PIN_DIR", &self.pins)
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_FILE");
        command
    }

    /// Prints `$ ARGS` and runs it with the terminal; returns its status.
    fn show(&self, args: &[&str]) -> anyhow::Result<std::process::ExitStatus> {
        println!("\n$ {}", shell_words(args));
        self.command(args)
            .status()
            .with_context(|| format!("cannot run {}", args[0]))
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = self.show(args)?;
        if !status.success() {
            bail!("`{}` failed ({status})", args.join(" "));
        }
        Ok(())
    }

    fn capprof(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["capprof"];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// Prints `$ ARGS` and runs it; its output only when it fails.
    fn quietly(&self, args: &[&str]) -> anyhow::Result<()> {
        println!("\n$ {}", shell_words(args));
        let output = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", args[0]))?;
        if !output.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// A command line as a shell would take it: words with spaces or shell characters quoted.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|arg| {
            let plain = arg.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '=' | ':' | ',')
            });
            match plain && !arg.is_empty() {
                true => (*arg).to_owned(),
                false => format!("'{}'", arg.replace('\'', r"'\''")),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whatever happened: takes the project down, so that no container outlives the demo, and
/// unloads a tracer a failed run left pinned.
struct Cleanup<'a>(&'a Demo);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let quiet = |command: &mut Command| {
            let _ = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(
            &mut self
                .0
                .command(&["docker-compose", "down", "-v", "--remove-orphans"]),
        );
        if self.0.pins.exists() {
            quiet(
                self.0
                    .command(&["capprof", "unload", "--pin-dir"])
                    .arg(&self.0.pins),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_as_a_shell_takes_them() {
        assert_eq!(
            shell_words(&["docker", "inspect", "--format", "{{.Name}}: x", "it's"]),
            r"docker inspect --format '{{.Name}}: x' 'it'\''s'"
        );
        assert_eq!(
            shell_words(&["capprof", "compose", "apply", "docker-compose.yml"]),
            "capprof compose apply docker-compose.yml"
        );
    }
}
