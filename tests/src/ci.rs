//! The skip policy: outside CI a test that cannot run here says why and passes; with `CI=true`
//! the same situation is a failure, so that a CI machine missing a privilege, a kernel feature
//! or a Docker engine cannot turn the suite green by skipping it.

use std::{fmt::Display, io::Write};

/// Whether the environment says this is CI (`CI=true`, as GitHub Actions and GitLab set it).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value.eq_ignore_ascii_case("true"))
}

/// Panics with `reason` in CI; elsewhere prints `skipped: <reason>` and returns, after which
/// the caller returns from the test.
///
/// The line goes straight to the process's stderr rather than through `eprintln!`, which the
/// test harness captures: a skip should be visible in a plain `cargo test` run.
#[track_caller]
pub fn skip_or_fail(reason: impl Display) {
    if is_ci() {
        panic!("CI=true, and this test cannot run: {reason}");
    }
    skip(reason);
}

/// Prints `skipped: <reason>` in CI too: for a test that deliberately does not run here (it
/// would disturb something it does not own), which is no missing capability.
pub fn skip(reason: impl Display) {
    let line = format!("skipped: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The value, or `None` after [`skip_or_fail`] with `what` and the error.
#[track_caller]
pub fn require<T, E: Display>(result: Result<T, E>, what: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            skip_or_fail(format_args!("{what}: {error}"));
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requirement_that_holds_gives_its_value() {
        assert_eq!(require(Ok::<_, String>(7), "seven"), Some(7));
    }

    #[test]
    fn a_missing_requirement_skips_outside_ci_and_fails_in_ci() {
        let outcome = std::panic::catch_unwind(|| require(Err::<u8, _>("no engine"), "docker"));
        if is_ci() {
            let message = outcome.expect_err("CI must fail");
            let text = message
                .downcast_ref::<String>()
                .expect("a formatted panic message");
            assert!(text.contains("docker: no engine"), "{text}");
        } else {
            assert_eq!(outcome.expect("outside CI a skip returns"), None);
        }
    }
}
