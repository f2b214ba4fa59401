//! `capprof status`: what the daemon is doing.

use capprof::{
    api::{ApiClient, ConnectArgs},
    recommend::format_time,
};
use capprof_proto::v1 as pb;

use super::{Exit, ps::ListFormat};

/// Show the daemon's version, attach mode, kernel, lost-event counters and uptime.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_CODES_HELP)]
pub struct StatusArgs {
    /// Lines for people, or one JSON object.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<Exit> {
    let mut client = ApiClient::connect(&args.connect.target()).await?;
    let status = client.status().await?;
    match args.format {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&status_json(&status))?),
        ListFormat::Table => print!("{}", lines(&status)),
    }
    Ok(Exit::Success)
}

fn mode_name(mode: i32) -> &'static str {
    match pb::AttachMode::try_from(mode) {
        Ok(pb::AttachMode::Fentry) => "fentry",
        Ok(pb::AttachMode::Kprobe) => "kprobe",
        Ok(pb::AttachMode::Tracepoint) => "tracepoint",
        Ok(pb::AttachMode::Unspecified) | Err(_) => "unknown",
    }
}

fn health(status: &pb::GetStatusResponse) -> String {
    match pb::TracerHealth::try_from(status.tracer_health) {
        Ok(pb::TracerHealth::Collecting) => "collecting".to_owned(),
        Ok(pb::TracerHealth::Stopped) => format!("stopped: {}", status.tracer_problem),
        Ok(pb::TracerHealth::KernelUnsupported) => {
            format!("kernel unsupported: {}", status.tracer_problem)
        }
        Ok(pb::TracerHealth::Unspecified) | Err(_) => "unknown".to_owned(),
    }
}

fn duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

fn lines(status: &pb::GetStatusResponse) -> String {
    let counters = status.counters.unwrap_or_default();
    let last_poll = match status.last_poll_ms {
        0 => "not yet".to_owned(),
        ms => format_time(ms),
    };
    format!(
        "capprof daemon {version}, up {uptime}{resumed}\n\
         kernel        {kernel}\n\
         attach        {attach}\n\
         tracer        {health}\n\
         last poll     {last_poll}\n\
         pending keys  {pending} (checks from cgroups not attributed yet)\n\
         lost          {lost} events, {dropped} checks dropped (map full), {sites} call sites dropped, {stacks} stack errors\n",
        version = status.version,
        uptime = duration(status.uptime_ms),
        resumed = if status.resumed {
            " (resumed a tracer that kept counting while it was down)"
        } else {
            ""
        },
        kernel = status.kernel,
        attach = status.attach_explanation,
        health = health(status),
        pending = status.pending_keys,
        lost = counters.events_lost,
        dropped = counters.checks_dropped,
        sites = counters.call_sites_dropped,
        stacks = counters.stack_errors,
    )
}

fn status_json(status: &pb::GetStatusResponse) -> serde_json::Value {
    let counters = status.counters.unwrap_or_default();
    serde_json::json!({
        "version": status.version,
        "attach_mode": mode_name(status.attach_mode),
        "attach_explanation": status.attach_explanation,
        "skipped_modes": status.skipped_modes.iter().map(|skipped| serde_json::json!({
            "mode": mode_name(skipped.mode),
            "reason": skipped.reason,
        })).collect::<Vec<_>>(),
        "resumed": status.resumed,
        "kernel": status.kernel,
        "started_at_ms": status.started_at_ms,
        "uptime_ms": status.uptime_ms,
        "last_poll_ms": status.last_poll_ms,
        "pending_keys": status.pending_keys,
        "tracer": health(status),
        "counters": {
            "events_lost": counters.events_lost,
            "checks_dropped": counters.checks_dropped,
            "call_sites_dropped": counters.call_sites_dropped,
            "stack_errors": counters.stack_errors,
            "unmatched_returns": counters.unmatched_returns,
        },
    })
}
