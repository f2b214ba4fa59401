//! Throw-away cgroup v2 directories for tests, removed on drop.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A cgroup v2 directory created for one test.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    id: u64,
}

impl TestCgroup {
    /// Creates `capprof-test-<label>-<pid>-<n>` under the v2 mount.
    pub fn create(label: &str) -> Self {
        let mount = capprof::cgroup::unified_mount().expect("a cgroup v2 mount");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = mount.join(format!("capprof-test-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("mkdir {}: {error}", path.display()));
        let id = capprof::cgroup::id_of(&path).expect("cgroup id");
        Self { path, id }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports for tasks in it.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once its last task has been reaped, which may lag a moment.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.path.display()
        );
    }
}
