//! The workload corpus end to end: each workload of `tests/workloads/` is profiled by a real
//! `capprof daemon` (under Docker's defaults, plus what its description says profiling needs),
//! its recommendation must equal its known minimal set exactly, and `capprof verify
//! --leave-one-out` must show that the set works and that each capability in it is needed.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use capprof_tests::{
    ci,
    daemon::{DaemonProcess, cap_add},
    docker::{ContainerBuilder, DockerEngine, engine_or_skip},
    workloads::{Workload, load_corpus, workloads_image},
};

/// A guard against hangs, not a measurement: the daemon folds every 200 ms.
const PATIENCE: Duration = Duration::from_secs(60);

/// Workloads profiled and verified at once. Each is mostly waiting on the engine, and the
/// verification runs of one never share a container with another's.
const PARALLEL: usize = 4;

#[test]
fn every_workload_gets_exactly_its_minimal_set_and_verify_proves_it() {
    if !ci::require_root() {
        return;
    }
    let Some(engine) = engine_or_skip() else {
        return;
    };
    let Some(image) = ci::require(workloads_image(&engine), "cannot build the corpus image") else {
        return;
    };
    let corpus = load_corpus().expect("the corpus reads");
    let daemon = DaemonProcess::start(&engine);

    let queue = Mutex::new(corpus.iter());
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some(workload) = next else { break };
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check_workload(&engine, &daemon, &image, workload)
                    }));
                    let outcome = outcome.unwrap_or_else(|panic| {
                        Err(panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "panicked".to_owned()))
                    });
                    results
                        .lock()
                        .unwrap()
                        .insert(workload.name.clone(), outcome);
                }
            });
        }
    });

    let results = results.into_inner().unwrap();
    let mut table = String::new();
    let mut failures = Vec::new();
    for (name, outcome) in &results {
        match outcome {
            Ok(line) => table.push_str(&format!("  {name:<22} {line}\n")),
            Err(why) => {
                table.push_str(&format!("  {name:<22} FAILED\n"));
                failures.push(format!("--- {name}:\n{why}"));
            }
        }
    }
    eprintln!("corpus ({} workloads):\n{table}", results.len());
    assert_eq!(results.len(), corpus.len());
    assert!(
        failures.is_empty(),
        "{} of {} workloads failed:\n{}\n\ndaemon log:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n"),
        daemon.log()
    );
}

/// Profiles, checks the recommendation and verifies one workload; the line for the summary.
fn check_workload(
    engine: &DockerEngine,
    daemon: &DaemonProcess,
    image: &str,
    workload: &Workload,
) -> Result<String, String> {
    let expected = &workload.spec.cap_add;
    let mut builder = ContainerBuilder::new(engine, &format!("corpus-{}", workload.name))
        .image(image)
        .command(["sh", "-c", &workload.script]);
    for option in workload.profile_options() {
        builder = builder.option(option);
    }
    let container = builder
        .start()
        .map_err(|error| format!("cannot start: {error}"))?;
    let exit = container
        .wait()
        .map_err(|error| format!("cannot wait: {error}"))?;
    if exit != workload.spec.profile_exit {
        return Err(format!(
            "the profiled run exited {exit}, expected {}:\n{}",
            workload.spec.profile_exit,
            container.logs().unwrap_or_default()
        ));
    }

    // Its last checks may still be on their way into the profile: verify waits until the
    // daemon has folded and attributed everything made before it started, and the report is
    // read again after it (and the set verify used is asserted too).
    let report = daemon.wait_for_report(container.name(), PATIENCE, |report| {
        report["total_checks"]
            .as_u64()
            .is_some_and(|total| total > 0)
    });

    let output = daemon.cli(&[
        "verify",
        container.name(),
        "--leave-one-out",
        "--format",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let verified: serde_json::Value = serde_json::from_str(&stdout).map_err(|error| {
        format!(
            "verify printed no JSON ({error}), exit {:?}:\n{stdout}\n{stderr}",
            output.status.code()
        )
    })?;
    let verified_set: Vec<String> = verified["cap_add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect();
    let report = daemon.report(container.name()).unwrap_or(report);
    let recommended = cap_add(&report);
    let mut problems = Vec::new();
    if &recommended != expected || &verified_set != expected {
        problems.push(format!(
            "recommended {recommended:?} (verify saw {verified_set:?}), expected exactly {expected:?}"
        ));
    }
    for (capability, alternative) in &workload.spec.dangerous {
        let flagged = report["dangerous"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|danger| danger["name"] == capability.as_str());
        match flagged {
            None => problems.push(format!("{capability} is not flagged as dangerous")),
            Some(danger) => {
                let text = danger["alternative"].as_str().unwrap_or_default();
                if !text.contains(alternative.as_str()) {
                    problems.push(format!(
                        "{capability}'s alternative does not mention {alternative:?}: {text:?}"
                    ));
                }
            }
        }
    }
    let flagged = report["dangerous"].as_array().map_or(0, Vec::len);
    if flagged != workload.spec.dangerous.len() {
        problems.push(format!(
            "{flagged} capabilities flagged dangerous, expected {}",
            workload.spec.dangerous.len()
        ));
    }
    let report_text = report.to_string();
    for mention in &workload.spec.report_mentions {
        if !report_text.contains(mention.as_str()) {
            problems.push(format!("the report does not mention {mention:?}"));
        }
    }
    if verified["recommended_run"]["passed"] != true {
        problems.push("verify: the workload failed with the recommended set".into());
    }
    let left_out: Vec<(String, bool)> = verified["leave_one_out"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|left| {
            (
                left["capability"].as_str().unwrap_or_default().to_owned(),
                // The workload's own exit status must show it: a denial only the tracer saw
                // proves less than a corpus workload (whose exit status says whether it
                // worked) can.
                left["run"]["passed"] == false && left["workload_broke"] == true,
            )
        })
        .collect();
    // A run without one capability that names what to add must name exactly that one.
    for left in verified["leave_one_out"].as_array().into_iter().flatten() {
        let dropped = left["capability"].as_str().unwrap_or_default();
        let mut named: Vec<&str> = left["run"]["denied"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|need| need["capability"].as_str())
            .collect();
        named.dedup();
        if !(named.is_empty() || named == [dropped]) {
            problems.push(format!("without {dropped}, verify says to add {named:?}"));
        }
    }
    let proven: Vec<&String> = left_out
        .iter()
        .filter(|(_, needed)| *needed)
        .map(|(name, _)| name)
        .collect();
    if proven.len() != expected.len() || left_out.len() != expected.len() {
        problems.push(format!(
            "leave-one-out proved {proven:?} needed, out of {expected:?}"
        ));
    }
    if output.status.code() != Some(0) {
        problems.push(format!("verify exited {:?}, not 0", output.status.code()));
    }
    if problems.is_empty() {
        let how = match workload.profile_options().join(" ") {
            options if options.is_empty() => "Docker's defaults".to_owned(),
            options => format!("Docker's defaults {options}"),
        };
        let failed = match workload.spec.profile_exit {
            0 => String::new(),
            code => format!(" (where it exited {code})"),
        };
        Ok(format!(
            "[{}]  profiled under {how}{failed}",
            expected.join(", ")
        ))
    } else {
        Err(format!(
            "{}\nreport:\n{report:#}\nverify:\n{verified:#}\n{stderr}",
            problems.join("\n")
        ))
    }
}
