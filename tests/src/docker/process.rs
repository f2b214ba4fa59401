//! Processes the harness starts and stops by pid, identified by pid and start time so that a
//! reused pid is never mistaken for them.

use std::{
    fmt,
    process::Child,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A process: its pid and its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessId {
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_time: start_time(pid).expect("/proc/self/stat is readable"),
        }
    }

    /// The process with this pid now, if any.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (a zombie does not).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some(stat) if stat.start_time == self.start_time && stat.state != 'Z')
    }

    /// `<pid>-<start time>`, as lease and record files store it.
    pub fn parse(text: &str) -> Option<Self> {
        let (pid, start_time) = text.trim().split_once('-')?;
        Some(Self {
            pid: pid.parse().ok()?,
            start_time: start_time.parse().ok()?,
        })
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pid, self.start_time)
    }
}

struct Stat {
    state: char,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The fields after the command name, which may itself contain spaces and parentheses.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is the first after the name, field 22 (starttime) the 20th.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|stat| stat.start_time)
}

/// Children this process spawned, kept to reap them once they exit.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Keeps a spawned child so that [`terminate`] can reap it.
pub fn adopt(child: Child) -> ProcessId {
    let id = ProcessId::of(child.id()).unwrap_or(ProcessId {
        pid: child.id(),
        start_time: 0,
    });
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(child);
    id
}

/// Reaps the process if it is our exited child; whether it is gone.
fn reap(process: ProcessId) -> bool {
    let mut children = CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(index) = children.iter().position(|child| child.id() == process.pid) {
        // Our child is gone only once reaped: until then it lingers as a zombie.
        if !matches!(children[index].try_wait(), Ok(Some(_))) {
            return false;
        }
        // Already reaped by try_wait; wait() only returns the status it kept.
        let _ = children.remove(index).wait();
        return true;
    }
    !process.is_alive()
}

/// Whether the process is gone within `timeout`.
pub fn wait_for_exit(process: ProcessId, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if reap(process) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then SIGKILL if the process is still there after `grace`. Whether it is gone.
pub fn terminate(process: ProcessId, grace: Duration) -> bool {
    if reap(process) {
        return true;
    }
    signal(process, libc::SIGTERM);
    if wait_for_exit(process, grace) {
        return true;
    }
    signal(process, libc::SIGKILL);
    wait_for_exit(process, Duration::from_secs(10))
}

fn signal(process: ProcessId, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(process.pid) else {
        return;
    };
    if process.is_alive() {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid was checked against its
        // start time just before, so it is the process we mean.
        unsafe { libc::kill(pid, signal) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_start_time_past_an_odd_name() {
        let text =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987654);
    }

    #[test]
    fn this_process_is_alive_and_round_trips() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        assert_eq!(ProcessId::parse(&me.to_string()), Some(me));
        let reborn = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !reborn.is_alive(),
            "a different start time is another process"
        );
    }

    #[test]
    fn terminates_and_reaps_a_child() {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let process = adopt(child);
        assert!(process.is_alive());
        assert!(terminate(process, Duration::from_secs(30)));
        assert!(!process.is_alive());
    }
}
