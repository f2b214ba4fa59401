//! The verification report for people.

use std::fmt::Write;

use super::{RunVerdict, VerifyReport};
use crate::capability::Capability;

fn names(capabilities: &[Capability]) -> String {
    if capabilities.is_empty() {
        return "(none)".to_owned();
    }
    capabilities
        .iter()
        .map(|capability| capability.short_name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_run(out: &mut String, run: &RunVerdict) {
    let exit = if run.timed_out {
        "did not end within the run timeout (--timeout) and was stopped".to_owned()
    } else if run.accepted_exits.contains(&run.exit_code) {
        format!("exited {} as expected", run.exit_code)
    } else {
        let accepted: Vec<String> = run.accepted_exits.iter().map(i64::to_string).collect();
        format!(
            "exited {} (expected {})",
            run.exit_code,
            accepted.join(" or ")
        )
    };
    let _ = writeln!(out, "  run {}: {exit}", run.container);
    for need in &run.denied {
        let via = need
            .kernel_path
            .as_deref()
            .map(|path| format!(" → {path}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    denied: {} ({}) in {}(){via} by {}, {}×",
            need.checked,
            need.class.name(),
            need.syscall,
            need.comm.as_deref().unwrap_or("?"),
            need.count
        );
    }
}

/// A plain-text report: the verdict first, then the evidence.
pub fn render_text(report: &VerifyReport) -> String {
    let mut out = String::new();
    let run = &report.recommended_run;
    let _ = writeln!(
        out,
        "verify {}: cap_drop: [ALL], cap_add: [{}]",
        report.target,
        names(&report.cap_add)
    );
    if run.passed {
        let _ = writeln!(
            out,
            "PASSED: the workload works with exactly these capabilities"
        );
    } else {
        let _ = writeln!(
            out,
            "FAILED: the workload does not work with these capabilities"
        );
    }
    describe_run(&mut out, run);
    if run.passed && run.exit_code != 0 {
        let _ = writeln!(
            out,
            "  note: the original run exited {} too, so this only shows the workload ends as it did; \
             a need it failed on before can still be missing",
            run.exit_code
        );
    }
    if !run.passed {
        let to_add = run.to_add();
        if to_add.is_empty() {
            let _ = writeln!(
                out,
                "  no capability check was denied, so no capability explains the difference: the workload may depend on \
                 something else that changed, or call a system call Docker's seccomp profile only allows with a \
                 capability (chroot, sethostname, mount...), which is refused before the kernel checks it"
            );
        } else {
            let _ = writeln!(out, "  add: {}", names(&to_add));
        }
    }
    if report.leave_one_out_requested {
        if !run.passed {
            let _ = writeln!(
                out,
                "leave-one-out: not run, since the recommended set itself does not work"
            );
        } else if report.leave_one_out.is_empty() {
            let _ = writeln!(
                out,
                "leave-one-out: nothing to leave out (the set is empty)"
            );
        } else {
            let _ = writeln!(out, "leave-one-out:");
            for left_out in &report.leave_one_out {
                let verdict = if left_out.workload_broke {
                    "needed: the workload breaks without it"
                } else if left_out.proven_necessary() {
                    "needed: a need is denied without it, though the workload ends as before \
                     (its own checks do not notice)"
                } else {
                    "NOT needed: the workload works without it"
                };
                let _ = writeln!(
                    out,
                    "  without {}: {verdict}",
                    left_out.capability.short_name()
                );
                describe_run(&mut out, &left_out.run);
            }
            let unnecessary = report.unnecessary();
            if unnecessary.is_empty() {
                let _ = writeln!(out, "MINIMAL: each capability in the set is needed");
            } else {
                let _ = writeln!(
                    out,
                    "NOT MINIMAL: remove {} from cap_add",
                    names(&unnecessary)
                );
            }
        }
    }
    out
}
