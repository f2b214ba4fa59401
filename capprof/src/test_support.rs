//! What unit tests share: skipping outside CI, and the call sites their profiles are built from.

use crate::profile::{EntryCallSite, Example};

/// Outside CI a unit test that needs the real kernel skips with a reason; in CI it fails.
pub fn skip_unless_ci(reason: &str) {
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("CI=true, and this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// One kernel call path (innermost frame first) and who took it first.
pub fn call_site(stack: &[&str], example: Example) -> EntryCallSite {
    EntryCallSite {
        stack: stack.iter().map(|frame| (*frame).to_owned()).collect(),
        example,
    }
}

/// A root process (`pid` its own thread-group leader) that made a check at `seen_at_ms`.
pub fn example(comm: &str, pid: u32, seen_at_ms: i64) -> Example {
    Example {
        pid,
        tgid: pid,
        uid: 0,
        gid: 0,
        comm: comm.to_owned(),
        seen_at_ms,
    }
}
