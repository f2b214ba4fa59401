//! Runs a command with a Docker engine: the one that answers already, or the test harness's own
//! dockerd, started for the command and stopped after it when nothing else uses it.
//!
//! ```text
//! capprof-with-docker -- COMMAND [ARG...]
//! ```
//!
//! The command runs with `DOCKER_HOST` set to the engine and the busybox test image
//! (`capprof-test/busybox:latest`) built. `cargo xtask demo` runs its steps this way, so the
//! demo starts and cleans up dockerd exactly as the tests do (see the harness's engine module:
//! no bridge, no iptables rules, a lease per user, the last user stops it by pid and puts the
//! host back). Exits with the command's status (128+n for a signal); 125 when no engine can be
//! had, 2 on bad usage.

use std::{
    ffi::OsString,
    os::unix::process::ExitStatusExt,
    process::{Command, ExitCode},
    sync::atomic::{AtomicI32, Ordering},
};

use capprof_tests::docker::{DockerEngine, busybox_image};

/// The running command's pid, for the SIGTERM handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_terminate(_: libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe and has no memory preconditions.
        unsafe { libc::kill(child, libc::SIGTERM) };
    }
}

extern "C" fn ignore(_: libc::c_int) {}

/// SIGINT from the terminal reaches the command too (same process group): this process waits
/// for it instead of dying before the engine is released. SIGTERM is passed on to the command.
/// Handlers, unlike an ignored disposition, are reset by exec, so the command gets the defaults.
fn install_signal_handlers() {
    for (signal, handler) in [
        (libc::SIGINT, ignore as extern "C" fn(libc::c_int)),
        (libc::SIGTERM, forward_terminate),
    ] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well formed; the
        // handlers only make async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|first| first == "--") {
        args.remove(0);
    }
    if args.is_empty() || args[0] == "--help" || args[0] == "-h" {
        eprintln!("usage: capprof-with-docker -- COMMAND [ARG...]");
        return ExitCode::from(2);
    }
    let engine = match DockerEngine::ensure() {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("capprof-with-docker: no Docker engine: {error}");
            return ExitCode::from(125);
        }
    };
    if let Err(error) = busybox_image(&engine) {
        eprintln!("capprof-with-docker: cannot build the busybox test image: {error}");
        return ExitCode::from(125);
    }
    install_signal_handlers();
    let mut command = Command::new(&args[0]);
    command
        .args(&args[1..])
        .env("DOCKER_HOST", engine.docker_host());
    let status = command.spawn().and_then(|mut child| {
        CHILD.store(child.id() as i32, Ordering::SeqCst);
        child.wait()
    });
    drop(engine);
    // Returning from main runs the harness's exit handler, which releases the engine.
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            (None, Some(signal)) => ExitCode::from(128u8.saturating_add(signal as u8)),
            (None, None) => ExitCode::FAILURE,
        },
        Err(error) => {
            eprintln!(
                "capprof-with-docker: cannot run {}: {error}",
                args[0].to_string_lossy()
            );
            ExitCode::from(127)
        }
    }
}
