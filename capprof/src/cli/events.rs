//! `capprof events`: capability checks as the daemon records them.

use std::io::Write;

use capprof::{
    api::{ApiClient, ConnectArgs},
    recommend::format_time,
};
use capprof_proto::v1 as pb;
use futures_util::StreamExt;

use super::{Exit, ps::ListFormat};

/// Print capability checks live as the daemon records them, until Ctrl-C.
///
/// Each line is one kind of check (container, capability, verdict, system call) folded in one
/// poll, with how many times it happened.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_CODES_HELP)]
pub struct EventsArgs {
    /// Only checks of this container, or of every container of a project/service or image, or
    /// `host` for checks outside containers.
    #[arg(long, value_name = "TARGET")]
    container: Option<String>,

    /// Only this capability (repeatable): NET_RAW, CAP_NET_RAW or net_raw.
    #[arg(long = "cap", value_name = "CAP")]
    capabilities: Vec<String>,

    /// Aligned lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: EventsArgs) -> anyhow::Result<Exit> {
    let mut client = ApiClient::connect(&args.connect.target()).await?;
    let checks = client
        .checks(args.container.as_deref(), args.capabilities.clone())
        .await?;
    tokio::pin!(checks);
    loop {
        let message = tokio::select! {
            message = checks.next() => message,
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Success),
        };
        let message = match message {
            Some(message) => message?,
            None => anyhow::bail!("the daemon ended the stream without saying why"),
        };
        if message.missed > 0 {
            eprintln!(
                "capprof: {} checks were left out of this stream because it was read too slowly (profiles are complete)",
                message.missed
            );
        }
        let Some(check) = message.check else {
            continue;
        };
        let mut out = std::io::stdout().lock();
        match args.format {
            ListFormat::Table => writeln!(out, "{}", line(&check))?,
            ListFormat::Json => writeln!(out, "{}", check_json(&check))?,
        }
        out.flush()?;
    }
}

fn owner(check: &pb::CheckEvent) -> String {
    use pb::subject::Kind;
    match check
        .subject
        .as_ref()
        .and_then(|subject| subject.kind.as_ref())
    {
        Some(Kind::Container(container)) => match check.container_name.is_empty() {
            true => container.id[..container.id.len().min(12)].to_owned(),
            false => check.container_name.clone(),
        },
        Some(Kind::Host(_)) => "(host)".to_owned(),
        Some(Kind::Service(service)) => format!("{}/{}", service.project, service.service),
        Some(Kind::Image(image)) => image.name.clone(),
        None => "?".to_owned(),
    }
}

fn verdict(check: &pb::CheckEvent) -> &'static str {
    match pb::Verdict::try_from(check.verdict) {
        Ok(pb::Verdict::Granted) => "granted",
        Ok(pb::Verdict::Denied) => "DENIED",
        Ok(pb::Verdict::Unspecified) | Err(_) => "?",
    }
}

fn line(check: &pb::CheckEvent) -> String {
    let (when, task) = match &check.task {
        Some(task) => (
            format_time(task.seen_at_ms),
            format!("{}[{}] uid {}", task.comm, task.pid, task.uid),
        ),
        None => ("-".to_owned(), "-".to_owned()),
    };
    format!(
        "{when}  {:<20}  {:<22}  {:<7}  {:<16}  {:>6}×  {task}",
        owner(check),
        check.capability,
        verdict(check),
        check.syscall,
        check.count
    )
}

fn check_json(check: &pb::CheckEvent) -> serde_json::Value {
    serde_json::json!({
        "owner": owner(check),
        "container_id": match check.subject.as_ref().and_then(|s| s.kind.as_ref()) {
            Some(pb::subject::Kind::Container(container)) => Some(container.id.clone()),
            _ => None,
        },
        "capability": check.capability,
        "verdict": verdict(check).to_ascii_lowercase(),
        "syscall": check.syscall,
        "count": check.count,
        "flags": check.flags,
        "task": check.task.as_ref().map(|task| serde_json::json!({
            "pid": task.pid,
            "tgid": task.tgid,
            "uid": task.uid,
            "gid": task.gid,
            "comm": task.comm,
            "seen_at_ms": task.seen_at_ms,
        })),
    })
}
