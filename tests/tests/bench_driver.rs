//! The benchmark driver (`capprof-bench`) as `cargo xtask bench` runs it: the loop's checks land
//! in a cgroup of its own that is gone afterwards, and capprof counts every one of them.
//!
//! Only counts and cleanup are asserted; timings are never compared here.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Command, Stdio},
};

use capprof_tests::ci;
use serde_json::Value;

const DRIVER: &str = env!("CARGO_BIN_EXE_capprof-bench");

fn run_loop(extra: &[&str]) -> Value {
    let output = Command::new(DRIVER)
        .args(["loop", "--iterations=20000", "--warmup=500"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run capprof-bench loop");
    assert!(output.status.success(), "loop failed: {}", output.status);
    serde_json::from_slice(&output.stdout).expect("the loop prints one JSON report")
}

/// A holder process, killed if the test fails before it exits.
struct Holder {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn start(program: &str) -> Self {
        let mut child = Command::new(DRIVER)
            .args(["hold", "--program", program])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start capprof-bench hold");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut holder = Self { child, stdout };
        assert_eq!(
            holder.line(),
            "ready",
            "the {program} holder attaches first"
        );
        holder
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the holder");
        line.trim().to_owned()
    }

    /// Tells the holder the loop is done and returns its report.
    fn finish(mut self) -> Value {
        let mut stdin = self.child.stdin.take().expect("piped");
        writeln!(stdin, "done").expect("write to the holder");
        drop(stdin);
        let report = self.line();
        let status = self.child.wait().expect("wait for the holder");
        assert!(status.success(), "holder failed: {status}");
        serde_json::from_str(&report).expect("the holder prints one JSON report")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn capprof_counts_every_check_of_the_loop_in_its_private_cgroup() {
    if !ci::require_root() {
        return;
    }
    let holder = Holder::start("capprof");
    let measured = run_loop(&[]);
    let report = holder.finish();

    assert_eq!(measured["private_cgroup"], true);
    assert_eq!(measured["sethostname_calls"], 20_500);
    let batches = measured["batch_ns_per_check"].as_array().unwrap();
    assert_eq!(batches.len(), 1000, "the default batch count");
    assert!(batches.iter().all(|ns| ns.as_f64().unwrap() > 0.0));
    let cgroup_id = measured["cgroup_id"].as_u64().unwrap();
    assert!(
        cgroup_id > 1,
        "the loop ran in a cgroup of its own, not the root"
    );
    assert_eq!(
        report["sethostname_checks"][cgroup_id.to_string()],
        20_500,
        "capprof counted every sethostname check: {report}"
    );
    assert_eq!(report["counters"]["checks_dropped"], 0);
    assert_eq!(
        capprof::cgroup::path_of_id(cgroup_id).expect("look up the cgroup id"),
        None,
        "the loop removed its cgroup"
    );
}

#[test]
fn the_empty_program_holder_reports_its_program() {
    if !ci::require_root() {
        return;
    }
    let holder = Holder::start("empty");
    run_loop(&[]);
    let report = holder.finish();
    assert!(report["program_id"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_shared_cgroup_loop_reports_the_callers_cgroup() {
    if !ci::require_root() {
        return;
    }
    let measured = run_loop(&["--shared-cgroup", "--cpu=0", "--batches=7"]);
    let (_, own_cgroup) = capprof::cgroup::of_pid(std::process::id()).expect("own cgroup");
    assert_eq!(measured["private_cgroup"], false);
    assert_eq!(measured["cgroup_id"].as_u64(), Some(own_cgroup));
    assert_eq!(measured["cpu"], 0);
    assert_eq!(measured["batch_ns_per_check"].as_array().unwrap().len(), 7);
}
