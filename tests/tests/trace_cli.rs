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

#[test]
fn a_cgroup_traced_for_a_while_as_a_table_shows_its_checks_and_no_one_elses() {
    use std::io::{BufRead, BufReader, Read};

    use capprof::loader::{Tracer, TracerOptions};
    use capprof_tests::{cgroups, trigger::Trigger};

    if !ci::require_root() {
        return;
    }
    let Some(mut capprof) = capprof() else { return };
    // Forced to the path auto would choose, so that --attach is exercised on any kernel.
    let mode = match Tracer::load(&TracerOptions::default()) {
        Ok(tracer) => tracer.attach_choice().mode,
        Err(error) => {
            ci::skip_or_fail(format_args!("the tracer does not load here: {error}"));
            return;
        }
    };
    let traced = cgroups::create("trace-table");
    let other = cgroups::create("trace-table-other");
    let mut child = capprof
        .args(["trace", "--attach", &mode.to_string(), "--cgroup"])
        .arg(traced.path())
        .args(["--duration", "4", "--format", "table"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run capprof trace");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut attached = String::new();
    stderr
        .read_line(&mut attached)
        .expect("capprof trace says how it attached");
    assert!(
        attached.contains(&format!("tracing cap_capable via {mode}")),
        "{attached:?}"
    );
    let chown = |times| Trigger {
        operations: &["chown"],
        times,
        drop_caps: false,
        comm: None,
    };
    chown(2).run_in(&traced);
    chown(5).run_in(&other);
    let output = child
        .wait_with_output()
        .expect("capprof trace ends after --duration");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    assert!(output.status.success(), "{output:?} {rest}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (_, final_counts) = stdout
        .split_once("final counts:")
        .unwrap_or_else(|| panic!("no final counts in:\n{stdout}"));
    let rows: Vec<Vec<&str>> = final_counts
        .lines()
        .take_while(|line| !line.starts_with("cgroup "))
        .map(|line| line.split_whitespace().collect())
        .filter(|columns: &Vec<&str>| columns.first().is_some_and(|c| c.parse::<u64>().is_ok()))
        .collect();
    let traced_id = traced.id().to_string();
    assert!(
        rows.iter().all(|row| row.contains(&traced_id.as_str())),
        "only the traced cgroup's checks: {stdout}"
    );
    let fchownat: Vec<&Vec<&str>> = rows
        .iter()
        .filter(|row| row[1] == "CAP_CHOWN" && row[2] == "granted" && row[3] == "fchownat")
        .collect();
    assert_eq!(fchownat.len(), 1, "{stdout}");
    assert_eq!(
        fchownat[0][0], "2",
        "two chowns in the traced cgroup: {stdout}"
    );
    assert!(
        stdout.contains(&format!("cgroup {traced_id} {}:", traced.path().display())),
        "the summary names the cgroup by its path: {stdout}"
    );
}
