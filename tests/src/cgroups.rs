//! Throw-away cgroup v2 directories for tests, removed on drop.

use std::sync::atomic::{AtomicU32, Ordering};

pub use capprof::cgroup::OwnedCgroup as TestCgroup;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Creates `capprof-test-<label>-<pid>-<n>` under the v2 mount; panics when it cannot.
pub fn create(label: &str) -> TestCgroup {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("capprof-test-{label}-{}-{n}", std::process::id());
    TestCgroup::create(&name).unwrap_or_else(|error| panic!("test cgroup {name}: {error}"))
}
