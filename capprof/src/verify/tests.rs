//! The decision logic with a fake workload: a set of capabilities it needs, and what it does
//! when one is missing.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    rc::Rc,
};

use super::*;
use crate::{
    classify::CheckClass,
    profile::{Subject, SubjectInfo},
    recommend::{Evidence, RecommendedCapability},
};

/// A workload that needs `needs`; without one it either exits 1 (`fails_loudly`) or exits 0
/// with the denial visible in its profile. `extra_denied` is denied in every run (a need the
/// recommendation missed).
struct FakeWorkload {
    needs: BTreeSet<Capability>,
    fails_loudly: bool,
    extra_denied: Option<Capability>,
    expected_exit: i64,
    runs: Vec<RunRequest>,
    cleaned: Vec<String>,
    /// What each run's profile shows, by container id (shared with [`FakeProfiles`]).
    profiles: Rc<RefCell<BTreeMap<String, Recommendation>>>,
}

impl FakeWorkload {
    fn needing(needs: &[Capability]) -> Self {
        Self {
            needs: needs.iter().copied().collect(),
            fails_loudly: true,
            extra_denied: None,
            expected_exit: 0,
            runs: Vec::new(),
            cleaned: Vec::new(),
            profiles: Rc::default(),
        }
    }
}

fn denied(capability: Capability) -> RecommendedCapability {
    RecommendedCapability {
        capability,
        reason: String::new(),
        was_denied: true,
        danger: None,
        evidence: vec![Evidence {
            checked: capability.kernel_name().to_owned(),
            verdict: EntryVerdict::Denied,
            class: CheckClass::Missing,
            rule: "denied".into(),
            syscall: "bind".into(),
            kernel_path: Some("__inet_bind".into()),
            count: 1,
            first_seen_ms: 0,
            last_seen_ms: 0,
            comm: Some("app".into()),
            pid: Some(7),
            uid: Some(0),
            stack: vec![],
            reason: "denied".into(),
        }],
    }
}

fn granted(capability: Capability) -> RecommendedCapability {
    let mut recommended = denied(capability);
    recommended.was_denied = false;
    recommended.evidence[0].verdict = EntryVerdict::Granted;
    recommended.evidence[0].class = CheckClass::Required;
    recommended
}

fn recommendation(cap_add: Vec<RecommendedCapability>) -> Recommendation {
    Recommendation {
        subject: Subject::Container { id: "x".into() },
        info: SubjectInfo::default(),
        cap_add,
        unneeded_defaults: vec![],
        denied: vec![],
        dangerous: vec![],
        ignored: BTreeMap::new(),
        total_checks: 1,
    }
}

impl WorkloadRunner for FakeWorkload {
    fn expected_exit(&self) -> i64 {
        self.expected_exit
    }

    async fn run(&mut self, request: &RunRequest) -> Result<RunOutcome, VerifyError> {
        self.runs.push(request.clone());
        let id = format!("run-{}", self.runs.len());
        let granted_set: BTreeSet<Capability> = request.cap_add.iter().copied().collect();
        let missing: Vec<Capability> = self.needs.difference(&granted_set).copied().collect();
        let mut cap_add: Vec<RecommendedCapability> = self
            .needs
            .intersection(&granted_set)
            .copied()
            .map(granted)
            .collect();
        cap_add.extend(missing.iter().copied().map(denied));
        cap_add.extend(self.extra_denied.map(denied));
        self.profiles
            .borrow_mut()
            .insert(id.clone(), recommendation(cap_add));
        let exit_code = if missing.is_empty() || !self.fails_loudly {
            self.expected_exit
        } else {
            1
        };
        Ok(RunOutcome {
            container_name: format!("verify-{id}"),
            container_id: id,
            exit_code,
            timed_out: false,
        })
    }

    async fn clean_up(&mut self, outcome: &RunOutcome) -> Result<(), VerifyError> {
        self.cleaned.push(outcome.container_id.clone());
        Ok(())
    }
}

/// The fake's profiles, read through the same trait the daemon's are.
struct FakeProfiles(Rc<RefCell<BTreeMap<String, Recommendation>>>);

impl RunProfiles for FakeProfiles {
    async fn recommendation(&mut self, run: &RunOutcome) -> Result<Recommendation, VerifyError> {
        self.0
            .borrow()
            .get(&run.container_id)
            .cloned()
            .ok_or(VerifyError::NoProfile {
                container: run.container_name.clone(),
            })
    }
}

/// Runs the real `verify` against the fake.
async fn verify_fake(workload: &mut FakeWorkload, plan: &VerifyPlan) -> VerifyReport {
    let mut profiles = FakeProfiles(workload.profiles.clone());
    verify(workload, &mut profiles, plan).await.unwrap()
}

fn plan(cap_add: &[Capability], leave_one_out: bool) -> VerifyPlan {
    VerifyPlan {
        target: "web".into(),
        cap_add: cap_add.to_vec(),
        leave_one_out,
    }
}

#[tokio::test]
async fn the_exact_set_passes_and_each_capability_is_proven_needed() {
    let needs = [Capability::Chown, Capability::NetBindService];
    let mut workload = FakeWorkload::needing(&needs);
    let report = verify_fake(&mut workload, &plan(&needs, true)).await;
    assert!(report.passed());
    assert!(report.proven_minimal(), "{}", render_text(&report));
    assert_eq!(workload.runs.len(), 3);
    assert_eq!(workload.runs[1].cap_add, vec![Capability::NetBindService]);
    assert_eq!(workload.runs[1].purpose, "without-CHOWN");
    assert_eq!(
        workload.cleaned.len(),
        3,
        "every run's container is removed"
    );
    let text = render_text(&report);
    assert!(
        text.contains("PASSED") && text.contains("MINIMAL"),
        "{text}"
    );
}

#[tokio::test]
async fn a_capability_the_workload_works_without_is_reported_unnecessary() {
    let mut workload = FakeWorkload::needing(&[Capability::Chown]);
    let report = verify_fake(
        &mut workload,
        &plan(&[Capability::Chown, Capability::SysAdmin], true),
    )
    .await;
    assert!(report.passed());
    assert!(!report.proven_minimal());
    assert_eq!(report.unnecessary(), vec![Capability::SysAdmin]);
    let text = render_text(&report);
    assert!(text.contains("NOT MINIMAL: remove SYS_ADMIN"), "{text}");
}

#[tokio::test]
async fn a_denied_need_fails_the_run_even_when_the_exit_status_matches() {
    let mut workload = FakeWorkload::needing(&[Capability::Chown, Capability::Kill]);
    workload.fails_loudly = false;
    let report = verify_fake(&mut workload, &plan(&[Capability::Chown], true)).await;
    assert!(!report.passed());
    assert_eq!(report.recommended_run.exit_code, 0);
    assert_eq!(report.recommended_run.to_add(), vec![Capability::Kill]);
    assert!(
        report.leave_one_out.is_empty(),
        "no leave-one-out after a failed run"
    );
    let text = render_text(&report);
    assert!(
        text.contains("FAILED") && text.contains("add: KILL"),
        "{text}"
    );
    assert!(text.contains("leave-one-out: not run"), "{text}");
}

#[tokio::test]
async fn leave_one_out_counts_a_silent_denial_as_breaking() {
    let needs = [Capability::Chown];
    let mut workload = FakeWorkload::needing(&needs);
    workload.fails_loudly = false;
    let report = verify_fake(&mut workload, &plan(&needs, true)).await;
    assert!(report.proven_minimal(), "{}", render_text(&report));
    assert_eq!(report.leave_one_out[0].run.exit_code, 0);
    assert_eq!(report.leave_one_out[0].run.denied.len(), 1);
    assert!(
        !report.leave_one_out[0].workload_broke,
        "the workload ended as before"
    );
    let text = render_text(&report);
    assert!(
        text.contains(
            "without CHOWN: needed: a need is denied without it, though the workload ends as before"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn leave_one_out_says_when_the_workload_itself_broke() {
    let needs = [Capability::Chown, Capability::Kill];
    let mut workload = FakeWorkload::needing(&needs);
    let report = verify_fake(&mut workload, &plan(&needs, true)).await;
    assert!(report.proven_minimal(), "{}", render_text(&report));
    for left_out in &report.leave_one_out {
        assert!(left_out.workload_broke, "{left_out:?}");
    }
    let text = render_text(&report);
    assert!(
        text.contains("without KILL: needed: the workload breaks without it"),
        "{text}"
    );
}

#[tokio::test]
async fn a_different_exit_status_fails_without_naming_a_capability() {
    let mut workload = FakeWorkload::needing(&[]);
    workload.expected_exit = 3;
    let outcome = RunOutcome {
        container_id: "c".into(),
        container_name: "c".into(),
        exit_code: 0,
        timed_out: false,
    };
    let request = RunRequest {
        cap_add: vec![],
        purpose: "recommended".into(),
    };
    let verdict = RunVerdict::judge(&request, &outcome, &[3], &recommendation(vec![]));
    assert!(!verdict.passed);
    assert!(verdict.to_add().is_empty());
    let report = VerifyReport {
        target: "job".into(),
        cap_add: vec![],
        recommended_run: verdict,
        leave_one_out: vec![],
        leave_one_out_requested: false,
    };
    let text = render_text(&report);
    assert!(text.contains("exited 0 (expected 3)"), "{text}");
    // Through `verify`, an original that failed may be followed by a run that succeeds.
    let mut workload = FakeWorkload::needing(&[Capability::Chown]);
    workload.expected_exit = 3;
    let report = verify_fake(&mut workload, &plan(&[Capability::Chown], true)).await;
    assert_eq!(report.recommended_run.accepted_exits, vec![0, 3]);
    assert!(report.proven_minimal(), "{}", render_text(&report));
    assert!(text.contains("seccomp"), "{text}");
}

#[tokio::test]
async fn a_run_stopped_for_taking_too_long_fails_whatever_its_status() {
    let request = RunRequest {
        cap_add: vec![],
        purpose: "without-NET_BIND_SERVICE".into(),
    };
    let outcome = RunOutcome {
        container_id: "c".into(),
        container_name: "c".into(),
        exit_code: TIMED_OUT_EXIT,
        timed_out: true,
    };
    let verdict = RunVerdict::judge(
        &request,
        &outcome,
        &[TIMED_OUT_EXIT],
        &recommendation(vec![]),
    );
    assert!(!verdict.passed);
    let report = VerifyReport {
        target: "web".into(),
        cap_add: vec![],
        recommended_run: verdict,
        leave_one_out: vec![],
        leave_one_out_requested: false,
    };
    assert!(
        render_text(&report).contains("did not end within the run timeout"),
        "{}",
        render_text(&report)
    );
}

#[tokio::test]
async fn a_command_that_outlives_its_timeout_is_killed() {
    let mut sleeper = tokio::process::Command::new("sleep");
    sleeper.arg("30");
    let started = std::time::Instant::now();
    let status = status_within(&mut sleeper, std::time::Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(status, None);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let mut quick = tokio::process::Command::new("true");
    let status = status_within(&mut quick, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert!(status.is_some_and(|status| status.success()));
}
