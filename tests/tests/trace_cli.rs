//! The `capprof trace` command as users run it: the real binary, the real kernel.

use std::process::Command;

use capprof_tests::{api::capprof_binary, ci, trigger::trigger_path};

fn capprof() -> Option<Command> {
    match capprof_binary() {
        Some(binary) => Some(Command::new(binary)),
        None => {
            ci::skip_or_fail("the capprof binary is not built (cargo build -p capprof)");
            None
        }
    }
}

#[test]
fn json_lines_report_a_commands_checks_then_a_summary() {
    if !ci::require_root() {
        return;
    }
    let Some(mut capprof) = capprof() else { return };
    let workdir = tempfile::tempdir().expect("workdir");
    let output = capprof
        .args(["trace", "--format", "json", "--"])
        .arg(trigger_path())
        .arg("--workdir")
        .arg(workdir.path())
        .args(["--times", "3", "chown"])
        .output()
        .expect("run capprof trace");
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
        })
        .collect();
    let chown = lines
        .iter()
        .rev()
        .find(|line| {
            line["kind"] == "check" && line["cap"] == "CAP_CHOWN" && line["syscall"] == "fchownat"
        })
        .unwrap_or_else(|| panic!("no chown check in {lines:#?}"));
    assert_eq!(chown["verdict"], "granted");
    assert_eq!(chown["count"], 3, "{chown:#}");
    assert_eq!(chown["comm"], "capprof-trigger");
    assert_eq!(chown["uid"], 0);
    assert!(
        chown["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|frame| frame.as_str().unwrap().contains("setattr_prepare")),
        "{chown:#}"
    );
    for field in ["cgroup_id", "pid", "tgid"] {
        assert!(chown[field].as_u64().is_some(), "{field} in {chown:#}");
    }
    let summary = lines
        .iter()
        .find(|line| line["kind"] == "cgroup_summary")
        .unwrap_or_else(|| panic!("no summary in {lines:#?}"));
    assert_eq!(
        summary["cgroup_id"], chown["cgroup_id"],
        "only the command's cgroup is traced"
    );
    assert!(lines.iter().any(|line| line["kind"] == "counters"));
}

#[test]
fn trace_exits_with_the_commands_status() {
    if !ci::require_root() {
        return;
    }
    let Some(mut capprof) = capprof() else { return };
    let status = capprof
        .args(["trace", "--", "sh", "-c", "exit 7"])
        .status()
        .expect("run capprof trace");
    assert_eq!(status.code(), Some(7));
}

#[test]
fn without_privileges_trace_says_what_it_needs() {
    if !ci::require_root() {
        return;
    }
    let Some(binary) = capprof_binary() else {
        ci::skip_or_fail("the capprof binary is not built");
        return;
    };
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(binary)
        .args(["trace", "--duration", "1"])
        .output()
        .expect("run capprof as nobody through setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "exit code for missing privileges: {stderr}"
    );
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("setcap"),
        "says how to grant them: {stderr}"
    );
}
