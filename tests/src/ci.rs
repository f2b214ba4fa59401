//! What a test does when the machine cannot run it.
//!
//! In CI (`CI=true`) a missing privilege, kernel feature or Docker engine is a failure: the suite
//! exists to prove those paths. Elsewhere the test prints one line and returns.

/// Whether the suite runs in CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Fails the test in CI; otherwise prints `skipped: <reason>` for the caller to return.
#[track_caller]
pub fn skip_or_fail(reason: &str) {
    if in_ci() {
        panic!("CI=true and this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// `true` when the process is root; otherwise applies [`skip_or_fail`] and returns `false`.
#[track_caller]
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_or_fail("needs root (load eBPF programs, create cgroups)");
    false
}
