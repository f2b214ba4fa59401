//! capprof's developer tasks: `cargo xtask <task>`.

mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "capprof's developer tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Boots real kernels (Debian's 6.1 by default) under QEMU and runs the tracer's integration
    /// tests there once per attach mode.
    VmTest(vm::VmTestArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::VmTest(args) => vm::run(args),
    }
}
