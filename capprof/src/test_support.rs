//! What unit tests share: skipping outside CI, and the checks their profiles are built from.

use crate::{
    capability::Capability,
    classify::entry_key,
    profile::{EntryCallSite, EntryVerdict, Example, ProfileEntry},
};

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

/// When a [`check`] was first and last seen unless the test says otherwise: 2025-12-03 17:01:02 UTC.
pub const SEEN_AT_MS: i64 = 1_764_781_262_000;

/// A profile entry for a unit test, from what the test is about: `cap` checked with `verdict`
/// in `syscall` along `stack` (innermost frame first). The rest has plain defaults that the
/// builder methods change: made once, by root `app` (pid 1), with no flags, at [`SEEN_AT_MS`].
pub fn check(cap: Capability, verdict: EntryVerdict, syscall: u32, stack: &[&str]) -> CheckEntry {
    CheckEntry(ProfileEntry {
        key: entry_key(cap, verdict, Some(syscall), 0),
        count: 1,
        first_seen_ms: SEEN_AT_MS,
        last_seen_ms: SEEN_AT_MS,
        call_sites: vec![call_site(stack, example("app", 1, SEEN_AT_MS))],
    })
}

/// A [`check`] being built; `.entry()` or `.into()` gives the [`ProfileEntry`].
#[derive(Clone, Debug)]
pub struct CheckEntry(ProfileEntry);

impl CheckEntry {
    /// Made by a process called `comm`.
    pub fn by(mut self, comm: &str) -> Self {
        self.examples()
            .for_each(|example| example.comm = comm.to_owned());
        self
    }

    /// Made by `pid`, its own thread-group leader.
    pub fn pid(mut self, pid: u32) -> Self {
        self.examples().for_each(|example| {
            example.pid = pid;
            example.tgid = pid;
        });
        self
    }

    /// Made by a process of `uid` (and the group of the same number).
    pub fn uid(mut self, uid: u32) -> Self {
        self.examples().for_each(|example| {
            example.uid = uid;
            example.gid = uid;
        });
        self
    }

    /// With these [`check_flags`](capprof_common::check_flags) in its key.
    pub fn flags(mut self, flags: u32) -> Self {
        self.0.key.flags = flags;
        self
    }

    /// Made `count` times.
    pub fn count(mut self, count: u64) -> Self {
        self.0.count = count;
        self
    }

    /// First seen (also by its example) at `first_ms`, last at `last_ms`.
    pub fn seen(mut self, first_ms: i64, last_ms: i64) -> Self {
        self.0.first_seen_ms = first_ms;
        self.0.last_seen_ms = last_ms;
        self.examples()
            .for_each(|example| example.seen_at_ms = first_ms);
        self
    }

    /// Seen once in time, at `at_ms`.
    pub fn seen_at(self, at_ms: i64) -> Self {
        self.seen(at_ms, at_ms)
    }

    pub fn entry(self) -> ProfileEntry {
        self.0
    }

    fn examples(&mut self) -> impl Iterator<Item = &mut Example> {
        self.0.call_sites.iter_mut().map(|site| &mut site.example)
    }
}

impl From<CheckEntry> for ProfileEntry {
    fn from(check: CheckEntry) -> Self {
        check.entry()
    }
}
