//! `--state-dir` and `--pin-dir`, defined once for every command that keeps profiles or loads
//! the tracer: a command that traces in its own process when no daemon runs must default to the
//! daemon's directories, so that its profiles and the daemon's merge.

use std::path::PathBuf;

use capprof::daemon::{DEFAULT_PIN_DIR, DEFAULT_STATE_DIR, PIN_DIR_ENV, STATE_DIR_ENV};

#[derive(Debug, clap::Args)]
pub(super) struct StateDirArg {
    /// Where profiles are kept (an SQLite database). The daemon writes there, and commands run
    /// while no daemon is running use it directly, so all their profiles merge.
    #[arg(id = "state_dir", long = "state-dir", env = STATE_DIR_ENV, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub(super) path: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(super) struct PinDirArg {
    /// bpffs directory where the tracer is pinned; it keeps counting there while no daemon runs.
    #[arg(id = "pin_dir", long = "pin-dir", env = PIN_DIR_ENV, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub(super) path: PathBuf,
}
