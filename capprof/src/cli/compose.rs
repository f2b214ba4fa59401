//! `capprof compose apply` and `capprof compose check`: carry the profiles into Compose files,
//! and gate CI on them.

use std::path::PathBuf;

use anyhow::Context;
use capprof::{
    api::ConnectArgs,
    compose::{self, ApplyOptions, ComposeProject, PrivilegedPolicy},
    compose_files::{self, PROJECT_NAME_ENV, ProjectName},
    service_profiles::{ProfileSource, ProjectProfiles},
};

use super::{Exit, dirs::StateDirArg, profile::source_error};

const COMPOSE_EXIT_CODES: &str = "\
Exit codes:
  0   apply: written (or nothing to change); check: every profiled service matches its profile
  1   failure: malformed YAML, a file changed while capprof worked, cannot write (nothing written)
  2   bad usage
  6   a service named with --service is not in the files, or no service of the project has a profile
  7   permission denied on the daemon's socket (run with sudo, or join the `capprof` group)
  11  check: a profiled service grants a capability it never used, misses one it needs, does not
      drop ALL, or is privileged";

/// Write profiled capabilities into Compose files (`apply`), or check them in CI (`check`).
///
/// Both read the profiles that `capprof profile` (or a running `capprof daemon`) recorded for
/// the project's services: from the daemon when one runs, otherwise straight from its state
/// directory. Services never profiled are left alone and named.
#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    #[command(subcommand)]
    command: ComposeCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ComposeCommand {
    Apply(ApplyArgs),
    Check(CheckArgs),
}

/// Which files, which project, where the profiles are.
#[derive(Debug, clap::Args)]
struct Target {
    /// The Compose file (default: as docker-compose finds it: COMPOSE_FILE, else
    /// docker-compose.yml, compose.yaml... here or in a parent directory, with its override file).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,

    /// More Compose files, merged in order as `docker-compose -f A -f B` merges them.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,

    /// The Compose project the profiles belong to (default: as docker-compose names it:
    /// COMPOSE_PROJECT_NAME, .env, the files' `name:`, else the first file's directory).
    #[arg(short = 'p', long, value_name = "NAME")]
    project: Option<String>,

    #[command(flatten)]
    state_dir: StateDirArg,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// Write `cap_drop: [ALL]` and the minimal `cap_add` (one comment with its reason each) into
/// every profiled service of existing Compose files
///
/// Examples:
///   capprof compose apply docker-compose.yml
///   capprof compose apply docker-compose.yml --service web --dry-run
///   capprof compose apply -f docker-compose.yml -f docker-compose.prod.yml -p shop
///
/// Everything else stays byte for byte: comments, order, anchors, quoting, other services.
/// Files are written atomically (a temporary file renamed over the original), and not at all
/// when the YAML is malformed, a service does not exist, or a file changed since it was read.
/// docs/compose.md has the editing rules (extends, anchors, privileged, several files).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, after_long_help = COMPOSE_EXIT_CODES)]
struct ApplyArgs {
    #[command(flatten)]
    target: Target,

    /// Only edit this service (repeatable; default: every profiled service).
    #[arg(long, value_name = "SERVICE")]
    service: Vec<String>,

    /// Print a unified diff instead of writing.
    #[arg(long)]
    dry_run: bool,

    /// Also remove `privileged: true` from the edited services (kept by default: it grants
    /// devices and lifts seccomp/AppArmor too, which a capability profile says nothing about).
    #[arg(long)]
    remove_privileged: bool,
}

/// Check that every profiled service drops ALL and adds exactly the capabilities it needs: the
/// CI gate after `compose apply`
///
/// Examples:
///   capprof compose check docker-compose.yml
///   capprof compose check -f docker-compose.yml -f docker-compose.ci.yml --format json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, after_long_help = COMPOSE_EXIT_CODES)]
struct CheckArgs {
    #[command(flatten)]
    target: Target,

    /// Lines for people, or one JSON object (docs/compose.md describes its fields).
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    format: CheckFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

/// No profile to work with.
#[derive(Debug, thiserror::Error)]
#[error(
    "no service of Compose project `{project}` (named by {origin}) has a profile in {source_description}. \
     Profile it first (`capprof profile -- docker-compose up`), or name the project the profiles \
     were recorded under with --project"
)]
pub struct NothingProfiled {
    project: String,
    origin: String,
    source_description: String,
}

pub async fn run(args: ComposeArgs) -> anyhow::Result<Exit> {
    match args.command {
        ComposeCommand::Apply(args) => apply(args).await,
        ComposeCommand::Check(args) => check(args).await,
    }
}

/// The files read, the project named, and its services' profiles.
struct Loaded {
    project: ComposeProject,
    profiles: ProjectProfiles,
}

async fn load(target: &Target) -> anyhow::Result<Loaded> {
    let given: Vec<PathBuf> = target.file.iter().chain(&target.files).cloned().collect();
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let compose_file_env = std::env::var("COMPOSE_FILE").ok();
    let files = compose_files::resolve_files(&given, compose_file_env.as_deref(), &cwd)?;
    let project = ComposeProject::load(&files)?;
    let environment = std::env::var(PROJECT_NAME_ENV).ok();
    let name: ProjectName =
        compose_files::project_name(target.project.as_deref(), environment.as_deref(), &files)?;
    let mut source = ProfileSource::open(&target.connect.target(), &target.state_dir.path)
        .await
        .map_err(source_error)?;
    let profiles = source
        .project(&name.name, &project.service_names())
        .await
        .map_err(source_error)?;
    if profiles.profiled.is_empty() {
        return Err(NothingProfiled {
            project: name.name,
            origin: name.origin.to_string(),
            source_description: source.describe(),
        }
        .into());
    }
    eprintln!(
        "capprof: project {} (named by {}), profiles from {}",
        name.name,
        name.origin,
        source.describe()
    );
    Ok(Loaded { project, profiles })
}

async fn apply(args: ApplyArgs) -> anyhow::Result<Exit> {
    let Loaded { project, profiles } = load(&args.target).await?;
    let options = ApplyOptions {
        services: args.service.clone(),
        privileged: match args.remove_privileged {
            true => PrivilegedPolicy::Remove,
            false => PrivilegedPolicy::Keep,
        },
    };
    let plan = compose::plan_apply(&project, &profiles.compose_recommendations(), &options)?;
    if args.dry_run {
        print!("{}", plan.unified_diff());
        eprint!("{}", plan.report());
        if plan.is_noop() {
            eprintln!("capprof: nothing to change");
        }
        return Ok(Exit::Success);
    }
    if plan.is_noop() {
        print!("{}", plan.report());
        println!("nothing to change: every profiled service already matches its profile");
        return Ok(Exit::Success);
    }
    let written = plan.write()?;
    print!("{}", plan.report());
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(Exit::Success)
}

async fn check(args: CheckArgs) -> anyhow::Result<Exit> {
    let Loaded { project, profiles } = load(&args.target).await?;
    let report = compose::check(&project, &profiles.compose_recommendations())?;
    match args.format {
        CheckFormat::Json => println!("{}", report.to_json()),
        CheckFormat::Text => println!("{report}"),
    }
    Ok(match report.is_clean() {
        true => Exit::Success,
        false => Exit::Mismatch,
    })
}
