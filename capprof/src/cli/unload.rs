//! `capprof unload`: detach the pinned tracer.

use std::path::PathBuf;

use anyhow::Context;
use capprof::loader::Tracer;

use super::Exit;

/// Detach the tracer the daemon left pinned in bpffs (it keeps counting while the daemon is down).
///
/// Stored profiles are kept. Stop the daemon first: a running daemon keeps its own copy attached
/// until it exits.
#[derive(Debug, clap::Args)]
pub struct UnloadArgs {
    /// bpffs directory where the tracer is pinned.
    #[arg(long, env = capprof::daemon::PIN_DIR_ENV, value_name = "DIR", default_value = capprof::daemon::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub async fn run(args: UnloadArgs) -> anyhow::Result<Exit> {
    let existed = args.pin_dir.exists();
    Tracer::unpin_all(&args.pin_dir)
        .with_context(|| format!("removing the pins under {}", args.pin_dir.display()))?;
    if existed {
        println!(
            "unloaded: removed the pinned tracer under {}",
            args.pin_dir.display()
        );
    } else {
        println!(
            "nothing to unload: no pinned tracer under {}",
            args.pin_dir.display()
        );
    }
    Ok(Exit::Success)
}
