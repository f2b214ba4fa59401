//! `cargo xtask test`: the whole test suite, as CI runs it: setup, the tests, clippy, rustfmt,
//! and the tracer's tests on Debian's kernels under QEMU (`vm-test`).
//!
//! The steps are a plain list ([`plan`]); a new kind of test is one more [`Step`] there.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    process::describe,
    setup::{self, SetupOptions},
    vm,
    workspace::Workspace,
};

/// What `test` may do.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct TestOptions {
    /// Let setup only report missing packages instead of installing them.
    #[arg(long)]
    pub no_install: bool,
    /// Leave out the VM tests (the fentry and kprobe paths on Debian's kernels under QEMU).
    #[arg(long)]
    pub no_vm: bool,
}

/// One step of the suite.
pub struct Step {
    pub name: String,
    /// When a prerequisite fails, the steps after it are not run.
    pub prerequisite: bool,
    action: Box<dyn FnOnce() -> anyhow::Result<()>>,
}

impl Step {
    pub fn new(
        name: impl Into<String>,
        action: impl FnOnce() -> anyhow::Result<()> + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            prerequisite: false,
            action: Box::new(action),
        }
    }

    /// A step that runs `command` and succeeds when it exits with 0.
    pub fn command(mut command: Command) -> Self {
        Self::new(describe(&command), move || {
            let status = command.status()?;
            if !status.success() {
                bail!("exited with {status}");
            }
            Ok(())
        })
    }

    fn prerequisite(mut self) -> Self {
        self.prerequisite = true;
        self
    }
}

/// The suite's steps, in order.
pub fn plan(workspace: &Workspace, options: TestOptions) -> Vec<Step> {
    let setup_workspace = workspace.clone();
    let setup_options = SetupOptions {
        vm: !options.no_vm,
        no_install: options.no_install,
    };
    let mut steps = vec![
        Step::new("cargo xtask setup", move || {
            setup::run(&setup_workspace, setup_options)
        })
        .prerequisite(),
    ];

    let mut test = workspace.cargo();
    // `CI` is inherited: with CI=true a test that cannot run fails instead of skipping. The eBPF
    // crate only builds for the BPF target (capprof's build script builds it), so it is left out.
    // --no-fail-fast: one failing test binary must not hide what the others would report.
    test.args([
        "test",
        "--workspace",
        "--exclude",
        "capprof-ebpf",
        "--no-fail-fast",
    ])
    .env_remove("AYA_BUILD_SKIP");
    steps.push(Step::command(test));

    let mut clippy = workspace.cargo();
    // In the tests' target directory, with the eBPF object the tests just built: the build
    // scripts and proc-macros are reused, which saves minutes on a cold CI machine. (Setting
    // AYA_BUILD_SKIP here would rebuild capprof, as the build script watches that variable.)
    clippy
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .env_remove("AYA_BUILD_SKIP");
    steps.push(Step::command(clippy));

    let mut fmt = workspace.cargo();
    fmt.args(["fmt", "--all", "--check"]);
    steps.push(Step::command(fmt));

    if !options.no_vm {
        let vm_workspace = workspace.clone();
        let kernels = vm::CI_DEBIAN_KERNELS;
        steps.push(Step::new(
            format!(
                "cargo xtask vm-test --debian-kernel {}",
                kernels.join(" --debian-kernel ")
            ),
            move || vm::run(&vm_workspace, vm::VmTestArgs::debian(&kernels)),
        ));
    }

    steps
}

/// What happened to one step.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Passed(Duration),
    Failed(Duration, String),
    NotRun,
}

/// Runs every step, prints a summary, fails when any step failed.
pub fn run(steps: Vec<Step>) -> anyhow::Result<()> {
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    let mut blocked = false;
    for step in steps {
        if blocked {
            outcomes.push((step.name, Outcome::NotRun));
            continue;
        }
        println!("\n==> {}", step.name);
        let started = Instant::now();
        let outcome = match (step.action)() {
            Ok(()) => Outcome::Passed(started.elapsed()),
            Err(error) => {
                blocked = step.prerequisite;
                Outcome::Failed(started.elapsed(), format!("{error:#}"))
            }
        };
        outcomes.push((step.name, outcome));
    }
    let (text, failed) = summary(&outcomes);
    print!("{text}");
    if failed > 0 {
        bail!("{failed} of {} steps failed", outcomes.len());
    }
    Ok(())
}

fn summary(outcomes: &[(String, Outcome)]) -> (String, usize) {
    let mut text = String::from("\nsummary:\n");
    let mut failed = 0;
    for (name, outcome) in outcomes {
        let line = match outcome {
            Outcome::Passed(took) => format!("  ok       {name} ({:.0} s)\n", took.as_secs_f64()),
            Outcome::Failed(took, why) => {
                failed += 1;
                format!("  FAILED   {name} ({:.0} s): {why}\n", took.as_secs_f64())
            }
            Outcome::NotRun => {
                failed += 1;
                format!("  not run  {name} (a prerequisite failed)\n")
            }
        };
        text.push_str(&line);
    }
    (text, failed)
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[test]
    fn a_failed_prerequisite_stops_the_suite_and_is_summarised() {
        let ran = Rc::new(RefCell::new(Vec::new()));
        let record = |name: &'static str, result: anyhow::Result<()>| {
            let ran = ran.clone();
            Step::new(name, move || {
                ran.borrow_mut().push(name);
                result
            })
        };
        let steps = vec![
            record("first", Ok(())),
            record("gate", Err(anyhow::anyhow!("toolchain missing"))).prerequisite(),
            record("after", Ok(())),
        ];
        let error = run(steps).unwrap_err();
        assert_eq!(*ran.borrow(), ["first", "gate"]);
        assert_eq!(error.to_string(), "2 of 3 steps failed");
    }

    #[test]
    fn ordinary_failures_do_not_stop_later_steps() {
        let ran = Rc::new(RefCell::new(0));
        let counting = |result: fn() -> anyhow::Result<()>| {
            let ran = ran.clone();
            Step::new("step", move || {
                *ran.borrow_mut() += 1;
                result()
            })
        };
        let steps = vec![
            counting(|| anyhow::bail!("tests failed")),
            counting(|| Ok(())),
        ];
        assert!(run(steps).is_err());
        assert_eq!(*ran.borrow(), 2);
    }

    #[test]
    fn summary_lists_each_step() {
        let outcomes = vec![
            (
                "cargo test".to_owned(),
                Outcome::Passed(Duration::from_secs(12)),
            ),
            (
                "cargo clippy".to_owned(),
                Outcome::Failed(
                    Duration::from_secs(3),
                    "exited with exit status: 101".to_owned(),
                ),
            ),
            ("cargo fmt".to_owned(), Outcome::NotRun),
        ];
        let (text, failed) = summary(&outcomes);
        assert_eq!(failed, 2);
        assert!(text.contains("  ok       cargo test (12 s)\n"), "{text}");
        assert!(
            text.contains("  FAILED   cargo clippy (3 s): exited with exit status: 101\n"),
            "{text}"
        );
        assert!(text.contains("  not run  cargo fmt"), "{text}");
    }

    #[test]
    fn commands_fail_on_non_zero_exit() {
        let fails = Step::command(Command::new("false"));
        assert_eq!(fails.name, "false");
        assert!((fails.action)().is_err());
        assert!((Step::command(Command::new("true")).action)().is_ok());
    }

    #[test]
    fn the_plan_starts_with_setup_as_a_prerequisite() {
        let steps = plan(&Workspace::locate(), TestOptions::default());
        let names: Vec<&str> = steps.iter().map(|step| step.name.as_str()).collect();
        assert_eq!(names[0], "cargo xtask setup");
        assert!(steps[0].prerequisite);
        assert!(
            names.iter().any(
                |name| name.ends_with("test --workspace --exclude capprof-ebpf --no-fail-fast")
            )
        );
        assert!(
            names
                .iter()
                .any(|name| name.ends_with("clippy --all-targets -- -D warnings"))
        );
        assert!(names.iter().any(|name| name.ends_with("fmt --all --check")));
        assert_eq!(
            names.last(),
            Some(&"cargo xtask vm-test --debian-kernel 6.1 --debian-kernel 6.12")
        );
        let without_vm = plan(
            &Workspace::locate(),
            TestOptions {
                no_vm: true,
                ..TestOptions::default()
            },
        );
        assert!(without_vm.iter().all(|step| !step.name.contains("vm-test")));
    }
}
