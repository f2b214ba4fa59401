//! `capprof verify`: run the workload again with only the recommended capabilities, and prove it.

use std::path::PathBuf;

use anyhow::Context;
use capprof::{
    api::ConnectArgs,
    daemon::DaemonConfig,
    docker::{self, EngineAddress},
    profiler::Profiler,
    verify::{self, ComposeRunner, ComposeTarget, ContainerRunner, VerifyPlan, VerifyReport},
};

use super::{
    Exit,
    dirs::{PinDirArg, StateDirArg},
};

/// Prove a recommendation: re-run the workload with cap_drop ALL plus the recommended cap_add
///
/// Examples:
///   capprof verify shop-web-1                          re-create an exited container
///   capprof verify shop-web-1 --leave-one-out          ... and prove each capability is needed
///   capprof verify shop/web --compose docker-compose.yml
///   capprof verify shop/web --compose docker-compose.yml -- ./integration-tests.sh
///
/// A container is re-created from its inspect data (same image by id, command, user, env, working
/// directory, sysctls, mounts, network mode, labels without Compose's) under a new name, and must
/// exit as the original did, or 0. With --compose, the service runs under a temporary override file
/// (cap_drop: [ALL], cap_add: [...]) in the project <project>-capprof-verify and must exit 0.
/// With a test command after `--`, the workload runs detached and the command's exit status
/// decides; it finds the verification container in $CAPPROF_VERIFY_CONTAINER, or (with
/// --compose) the project in $COMPOSE_FILE and $COMPOSE_PROJECT_NAME, the override in
/// $CAPPROF_VERIFY_OVERRIDE.
///
/// Every run is traced (by the running daemon, or in this process when none runs) into its own
/// container's profile: the profile being verified is left as it was. A run passes when it ends
/// as expected and no check capprof counts as a need was denied. --leave-one-out then drops each
/// capability in turn and expects the workload to break.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, after_long_help = super::EXIT_CODES_HELP)]
pub struct VerifyArgs {
    /// A container (name or id), or project/service.
    target: String,

    /// Run the service from this Compose file, with an override, instead of re-creating a
    /// container.
    #[arg(long, value_name = "FILE")]
    compose: Option<PathBuf>,

    /// Also run once without each recommended capability, expecting the workload to break.
    #[arg(long)]
    leave_one_out: bool,

    /// How long one run may take, in seconds, before it is stopped and counts as failed (a
    /// workload that hangs without a capability breaks too).
    #[arg(long, value_name = "SECS", default_value_t = verify::DEFAULT_RUN_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,

    /// Output: text for people, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    #[command(flatten)]
    state_dir: StateDirArg,

    #[command(flatten)]
    pin_dir: PinDirArg,

    #[command(flatten)]
    connect: ConnectArgs,

    /// A test command that exercises the workload; its exit status decides.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<Exit> {
    let embedded = DaemonConfig {
        state_dir: args.state_dir.path.clone(),
        pin_root: args.pin_dir.path.clone(),
        ..DaemonConfig::default()
    };
    let mut profiler = Profiler::connect_or_embed(&args.connect.target(), embedded).await?;
    let outcome = verify_with(&mut profiler, &args).await;
    let finished = profiler.finish().await;
    let report = outcome?;
    finished?;
    match args.format {
        Format::Text => print!("{}", verify::render_text(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(exit_for(&report))
}

async fn verify_with(profiler: &mut Profiler, args: &VerifyArgs) -> anyhow::Result<VerifyReport> {
    // The workload may have ended a moment ago: its last checks must be in the profile.
    profiler.settle(verify::SETTLE_TIMEOUT).await?;
    let recommendation = profiler.client().recommendation(&args.target).await?;
    let plan = VerifyPlan::for_recommendation(&args.target, &recommendation, args.leave_one_out);
    let timeout = std::time::Duration::from_secs(args.timeout);
    let report = match &args.compose {
        Some(file) => {
            let target = ComposeTarget::parse(&args.target, file)?;
            let mut runner =
                ComposeRunner::prepare(target, args.command.clone())?.with_timeout(timeout);
            verify::verify(&mut runner, profiler, &plan).await?
        }
        None => {
            let address = EngineAddress::from_env()?;
            let engine = docker::connect(&address)
                .await
                .with_context(|| format!("connecting to the Docker engine at {address}"))?;
            let mut runner = ContainerRunner::prepare(engine, &args.target, args.command.clone())
                .await?
                .with_timeout(timeout);
            verify::verify(&mut runner, profiler, &plan).await?
        }
    };
    Ok(report)
}

fn exit_for(report: &VerifyReport) -> Exit {
    if !report.passed() {
        Exit::VerificationFailed
    } else if report.leave_one_out_requested && !report.proven_minimal() {
        Exit::NotMinimal
    } else {
        Exit::Success
    }
}
