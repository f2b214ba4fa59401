//! `capprof unload`: detach the pinned tracer.

use anyhow::Context;
use capprof::loader::Tracer;

use super::{Exit, dirs::PinDirArg};

/// Detach the tracer the daemon left pinned in bpffs (it keeps counting while the daemon is down).
///
/// Stored profiles are kept. Stop the daemon first: a running daemon keeps its own copy attached
/// until it exits.
#[derive(Debug, clap::Args)]
pub struct UnloadArgs {
    #[command(flatten)]
    pin_dir: PinDirArg,
}

pub async fn run(args: UnloadArgs) -> anyhow::Result<Exit> {
    let existed = args.pin_dir.path.exists();
    Tracer::unpin_all(&args.pin_dir.path)
        .with_context(|| format!("removing the pins under {}", args.pin_dir.path.display()))?;
    if existed {
        println!(
            "unloaded: removed the pinned tracer under {}",
            args.pin_dir.path.display()
        );
    } else {
        println!(
            "nothing to unload: no pinned tracer under {}",
            args.pin_dir.path.display()
        );
    }
    Ok(Exit::Success)
}
