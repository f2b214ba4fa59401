//! capprof's developer tasks, run as `cargo xtask <task>`.
//!
//! xtask never links the `capprof` crate: `setup` has to work before the eBPF toolchain exists,
//! so everything else is driven as processes.

mod bench;
mod demo;
mod mounts;
mod packages;
mod process;
mod setup;
mod stats;
mod suite;
mod vm;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "capprof's developer tasks.",
    long_about = "capprof's developer tasks.\n\nStart with `cargo xtask setup` on a new machine; \
                  `cargo xtask test` runs everything CI runs."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check and install what building and testing capprof needs: Debian packages, bpf-linker,
    /// kernel features; then build capprof and run `capprof doctor`. Safe to repeat.
    Setup(setup::SetupOptions),
    /// Measure what capprof adds to each capability check, next to no program, an empty program
    /// and bpftrace (needs root).
    Bench(bench::BenchOptions),
    /// Run the whole test suite as CI does: setup, cargo test, clippy, rustfmt, and the VM tests.
    /// Set CI=true to turn skipped tests into failures.
    Test(suite::TestOptions),
    /// Boot real kernels (Debian 12's 6.1 by default) under QEMU and run the tracer's integration
    /// tests there once per attach mode: the fentry and kprobe paths this kernel may lack.
    VmTest(vm::VmTestArgs),
    /// The workflow on the bundled example (a web server on port 80 and a client): profile it
    /// while `docker-compose up` runs, write the result into its Compose file, bring it up
    /// again hardened, and check it (needs root; starts a dockerd when none runs).
    Demo(demo::DemoOptions),
    /// The demo's steps, run inside `capprof-with-docker`.
    #[command(hide = true)]
    DemoSteps(demo::StepsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let workspace = workspace::Workspace::locate();
    let outcome = match cli.task {
        Task::Setup(options) => setup::run(&workspace, options),
        Task::Bench(options) => bench::run(&workspace, &options),
        Task::Test(options) => suite::run(suite::plan(&workspace, options)),
        Task::VmTest(args) => vm::run(&workspace, args),
        Task::Demo(options) => demo::run(&workspace, options),
        Task::DemoSteps(args) => demo::steps(&args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The chain of causes is the message; a backtrace of xtask itself helps nobody.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
