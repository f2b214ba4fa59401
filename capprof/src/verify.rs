//! `capprof verify`: proves a recommendation by running the workload again with `cap_drop: [ALL]`
//! plus exactly the recommended `cap_add`, tracing that run, and (with leave-one-out) once more
//! without each recommended capability in turn.
//!
//! The decision logic here only sees [`WorkloadRunner`] (runs the workload with a capability set
//! and says how it ended) and [`RunProfiles`] (what capprof saw that run do), so it is tested
//! with fakes; [`ContainerRunner`] re-creates a container from its inspect data, [`ComposeRunner`]
//! runs a Compose service with a temporary override file, and [`Profiler`] gives the profiles.
//!
//! The recommended run **passes** when the workload ends as the original did or with 0 (an
//! original that failed for want of a capability may well succeed now; a test command must
//! exit 0) and no check that counts as a need (`required`/`missing`) was denied. A capability
//! is **proven necessary** when the run without it ends otherwise than the recommended run did,
//! or has a need denied.
//! Each run is a new container, so its checks land in that container's own profile and never in
//! the profile that was verified.

mod compose;
mod container;
mod report;

use std::{collections::BTreeSet, time::Duration};

use serde::Serialize;

pub use compose::{ComposeRunner, ComposeTarget};
pub use container::ContainerRunner;
pub use report::render_text;

use crate::{
    capability::Capability,
    classify::CheckClass,
    profile::EntryVerdict,
    profiler::{Profiler, ProfilerError},
    recommend::Recommendation,
};

/// Labels every verification container carries, so that a person (and `docker ps --filter`)
/// can tell it from the workload it verifies.
pub const VERIFICATION_OF_LABEL: &str = "io.capprof.verification-of";
/// What the run tests: `recommended`, or `without-<CAP>` for a leave-one-out run.
pub const VERIFICATION_RUN_LABEL: &str = "io.capprof.verification-run";

/// With a test command, the environment variable naming the verification container.
pub const CONTAINER_ENV: &str = "CAPPROF_VERIFY_CONTAINER";
/// With a test command in Compose mode, the override file capprof wrote (also in `COMPOSE_FILE`).
pub const OVERRIDE_ENV: &str = "CAPPROF_VERIFY_OVERRIDE";

/// How long one run may take before it is stopped and counted as failed.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The exit status of a run that was stopped for taking too long (as `timeout(1)` reports).
pub const TIMED_OUT_EXIT: i64 = 124;

/// How long a run's checks may take to be folded and attributed after it ended.
pub const SETTLE_TIMEOUT: Duration = crate::profiler::SETTLE_TIMEOUT;

/// Why verification could not be carried out (as opposed to: it was carried out and failed).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Profiler(#[from] ProfilerError),
    #[error(transparent)]
    Engine(#[from] crate::docker::ConnectError),
    #[error("Docker engine request `{operation}` failed: {source}")]
    Docker {
        operation: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "no container named {target} (and no Compose service of that name has a container): give a container name or id, or project/service, as `capprof ps` lists them"
    )]
    NoContainer { target: String },
    #[error(
        "container {name} is still running, so there is no exit status to compare a re-run with: stop it first, or give a test command after `--` that exercises the verification container (its name is in ${CONTAINER_ENV})"
    )]
    StillRunning { name: String },
    #[error("cannot read the container's description from the engine: {0}")]
    Inspect(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{program}`: {source} (is it installed and on PATH?)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Compose(String),
    #[error(
        "no checks were attributed to the verification run {container}: is the capprof daemon following the same Docker engine (DOCKER_HOST)?"
    )]
    NoProfile { container: String },
}

/// One run of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRequest {
    /// Everything else is dropped.
    pub cap_add: Vec<Capability>,
    /// `recommended`, or `without-<CAP>`.
    pub purpose: String,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The container whose profile holds the run's checks (its full id).
    pub container_id: String,
    /// Its name, for people.
    pub container_name: String,
    /// The workload's exit status, or the test command's ([`TIMED_OUT_EXIT`] when stopped).
    pub exit_code: i64,
    /// It did not end within the run timeout and was stopped.
    pub timed_out: bool,
}

/// Runs the workload with a given capability set.
#[allow(
    async_fn_in_trait,
    reason = "used generically within this crate and its tests, never as dyn"
)]
pub trait WorkloadRunner {
    /// The exit status the original run ended with (0 for a test command).
    fn expected_exit(&self) -> i64;

    /// Runs the workload once with `cap_drop: [ALL]` and `request.cap_add`, and waits for it to
    /// end. The container stays until [`WorkloadRunner::clean_up`], so its profile can still be
    /// attributed.
    async fn run(&mut self, request: &RunRequest) -> Result<RunOutcome, VerifyError>;

    /// Removes what the run left (its container and anonymous volumes).
    async fn clean_up(&mut self, outcome: &RunOutcome) -> Result<(), VerifyError>;
}

/// What capprof saw a finished run do.
#[allow(
    async_fn_in_trait,
    reason = "used generically within this crate and its tests, never as dyn"
)]
pub trait RunProfiles {
    async fn recommendation(&mut self, run: &RunOutcome) -> Result<Recommendation, VerifyError>;
}

impl RunProfiles for Profiler {
    async fn recommendation(&mut self, run: &RunOutcome) -> Result<Recommendation, VerifyError> {
        let settled = self.settle(SETTLE_TIMEOUT).await?;
        if settled.pending_keys > 0 {
            tracing::warn!(
                pending = settled.pending_keys,
                "some checks were not attributed yet; the verdict uses what was"
            );
        }
        let query = format!("container:{}", run.container_id);
        match self.client().recommendation(&query).await {
            Ok(recommendation) => Ok(recommendation),
            Err(error) if error.kind() == crate::api::FailureKind::NotFound => {
                Err(VerifyError::NoProfile {
                    container: run.container_name.clone(),
                })
            }
            Err(error) => Err(ProfilerError::from(error).into()),
        }
    }
}

/// A check that counts as a need and was denied during a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeniedNeed {
    /// The capability that would allow it (may differ from the one checked: DAC_OVERRIDE for
    /// a read the kernel first checked DAC_READ_SEARCH for).
    #[serde(serialize_with = "compose_names::one")]
    pub capability: Capability,
    pub checked: String,
    pub syscall: String,
    pub kernel_path: Option<String>,
    pub comm: Option<String>,
    pub count: u64,
    pub class: CheckClass,
}

/// The verdict on one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunVerdict {
    pub purpose: String,
    #[serde(serialize_with = "compose_names::many")]
    pub cap_add: Vec<Capability>,
    pub container: String,
    pub exit_code: i64,
    /// Stopped after the run timeout: a workload that hangs without a capability breaks too.
    pub timed_out: bool,
    /// The exit statuses that count as working.
    pub accepted_exits: Vec<i64>,
    /// Needs that were denied: what failed.
    pub denied: Vec<DeniedNeed>,
    pub passed: bool,
}

impl RunVerdict {
    /// Judges a run from how it ended and what it was seen doing.
    pub fn judge(
        request: &RunRequest,
        outcome: &RunOutcome,
        accepted_exits: &[i64],
        recommendation: &Recommendation,
    ) -> Self {
        let denied = denied_needs(recommendation);
        let mut accepted_exits = accepted_exits.to_vec();
        accepted_exits.sort_unstable();
        accepted_exits.dedup();
        Self {
            purpose: request.purpose.clone(),
            cap_add: request.cap_add.clone(),
            container: outcome.container_name.clone(),
            exit_code: outcome.exit_code,
            timed_out: outcome.timed_out,
            passed: !outcome.timed_out
                && accepted_exits.contains(&outcome.exit_code)
                && denied.is_empty(),
            accepted_exits,
            denied,
        }
    }

    /// The capabilities whose denial made something fail, in name order.
    pub fn to_add(&self) -> Vec<Capability> {
        let names: BTreeSet<(&str, Capability)> = self
            .denied
            .iter()
            .map(|need| (need.capability.short_name(), need.capability))
            .collect();
        names
            .into_iter()
            .map(|(_, capability)| capability)
            .collect()
    }
}

/// Leave-one-out for one capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    #[serde(serialize_with = "compose_names::one")]
    pub capability: Capability,
    pub run: RunVerdict,
    /// The workload itself noticed: it ended otherwise than the passing run, or hung. Without
    /// this, only the tracer saw the loss (a need denied that the workload's own checks miss).
    pub workload_broke: bool,
}

impl LeftOut {
    fn new(capability: Capability, run: RunVerdict) -> Self {
        let workload_broke = run.timed_out || !run.accepted_exits.contains(&run.exit_code);
        Self {
            capability,
            run,
            workload_broke,
        }
    }

    /// The workload broke without it: it ended differently, or something it needed was denied.
    pub fn proven_necessary(&self) -> bool {
        !self.run.passed
    }
}

/// What verification found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub target: String,
    #[serde(serialize_with = "compose_names::many")]
    pub cap_add: Vec<Capability>,
    pub recommended_run: RunVerdict,
    /// Empty unless leave-one-out was asked for and the recommended run passed.
    pub leave_one_out: Vec<LeftOut>,
    pub leave_one_out_requested: bool,
}

impl VerifyReport {
    /// The workload works with exactly the recommended set.
    pub fn passed(&self) -> bool {
        self.recommended_run.passed
    }

    /// Recommended capabilities the workload worked without.
    pub fn unnecessary(&self) -> Vec<Capability> {
        self.leave_one_out
            .iter()
            .filter(|left_out| !left_out.proven_necessary())
            .map(|left_out| left_out.capability)
            .collect()
    }

    /// Every recommended capability was proven necessary (only meaningful with leave-one-out
    /// after a passing run).
    pub fn proven_minimal(&self) -> bool {
        self.leave_one_out_requested && self.passed() && self.unnecessary().is_empty()
    }
}

/// What to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyPlan {
    /// What the user named (for the report).
    pub target: String,
    pub cap_add: Vec<Capability>,
    pub leave_one_out: bool,
}

impl VerifyPlan {
    /// The plan for a recommendation.
    pub fn for_recommendation(
        target: &str,
        recommendation: &Recommendation,
        leave_one_out: bool,
    ) -> Self {
        Self {
            target: target.to_owned(),
            cap_add: recommendation
                .cap_add
                .iter()
                .map(|recommended| recommended.capability)
                .collect(),
            leave_one_out,
        }
    }
}

/// Runs the plan: the recommended set, then (when asked and it passed) each capability left out.
pub async fn verify<R: WorkloadRunner, P: RunProfiles>(
    runner: &mut R,
    profiles: &mut P,
    plan: &VerifyPlan,
) -> Result<VerifyReport, VerifyError> {
    let recommended = RunRequest {
        cap_add: plan.cap_add.clone(),
        purpose: "recommended".to_owned(),
    };
    let accepted = [runner.expected_exit(), 0];
    let recommended_run = run_and_judge(runner, profiles, &recommended, &accepted).await?;
    let mut leave_one_out = Vec::new();
    if plan.leave_one_out && recommended_run.passed {
        for capability in &plan.cap_add {
            let request = RunRequest {
                cap_add: plan
                    .cap_add
                    .iter()
                    .copied()
                    .filter(|kept| kept != capability)
                    .collect(),
                purpose: format!("without-{}", capability.short_name()),
            };
            let run =
                run_and_judge(runner, profiles, &request, &[recommended_run.exit_code]).await?;
            leave_one_out.push(LeftOut::new(*capability, run));
        }
    }
    Ok(VerifyReport {
        target: plan.target.clone(),
        cap_add: plan.cap_add.clone(),
        recommended_run,
        leave_one_out,
        leave_one_out_requested: plan.leave_one_out,
    })
}

async fn run_and_judge<R: WorkloadRunner, P: RunProfiles>(
    runner: &mut R,
    profiles: &mut P,
    request: &RunRequest,
    accepted_exits: &[i64],
) -> Result<RunVerdict, VerifyError> {
    tracing::info!(purpose = %request.purpose, cap_add = ?request.cap_add, "verification run");
    let outcome = runner.run(request).await?;
    let recommendation = profiles.recommendation(&outcome).await;
    // The container goes whatever the profile said.
    let cleaned = runner.clean_up(&outcome).await;
    let verdict = RunVerdict::judge(request, &outcome, accepted_exits, &recommendation?);
    cleaned?;
    Ok(verdict)
}

/// Runs `command` to its end, or kills it after `timeout`: its status, or `None` when killed.
pub(crate) async fn status_within(
    command: &mut tokio::process::Command,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let mut child = command.kill_on_drop(true).spawn()?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map(Some),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Ok(None)
        }
    }
}

/// Capabilities in JSON as Compose and `report --format json` spell them (`NET_RAW`).
mod compose_names {
    use serde::{Serializer, ser::SerializeSeq};

    use crate::capability::Capability;

    pub fn one<S: Serializer>(capability: &Capability, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(capability.short_name())
    }

    pub fn many<S: Serializer>(
        capabilities: &[Capability],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(capabilities.len()))?;
        for capability in capabilities {
            sequence.serialize_element(capability.short_name())?;
        }
        sequence.end()
    }
}

/// The denied checks of a run's profile that count as needs.
fn denied_needs(recommendation: &Recommendation) -> Vec<DeniedNeed> {
    let mut denied = Vec::new();
    for recommended in &recommendation.cap_add {
        for evidence in &recommended.evidence {
            if evidence.verdict == EntryVerdict::Denied && evidence.class.counts_as_need() {
                denied.push(DeniedNeed {
                    capability: recommended.capability,
                    checked: evidence.checked.clone(),
                    syscall: evidence.syscall.clone(),
                    kernel_path: evidence.kernel_path.clone(),
                    comm: evidence.comm.clone(),
                    count: evidence.count,
                    class: evidence.class,
                });
            }
        }
    }
    denied
}

#[cfg(test)]
mod tests;
