//! `capprof daemon`: trace every container, keep their profiles, serve the API.

use std::time::Duration;

use anyhow::Context;
use capprof::{
    api::{ListenArgs, Listeners},
    attach::AttachRequest,
    daemon::{DEFAULT_POLL_INTERVAL, DaemonConfig},
    docker::EngineAddress,
    service::DaemonService,
};
use tokio::signal::unix::{SignalKind, signal};

use super::{
    Exit,
    dirs::{PinDirArg, StateDirArg},
};

/// Run the profiler: trace every capability check, attribute it to its Docker container, keep a
/// profile per container, Compose service and image, and serve them over the API.
///
/// Leave it running while your tests run, then ask `capprof report <container|project/service>`.
/// Stopping it (Ctrl-C, SIGTERM, even SIGKILL) leaves the eBPF program pinned in bpffs, so checks
/// made while it is down are still counted when it comes back; `capprof unload` detaches it.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    state_dir: StateDirArg,

    #[command(flatten)]
    pin_dir: PinDirArg,

    /// How to hook cap_capable.
    #[arg(long, value_enum, default_value_t = AttachRequest::Auto)]
    attach: AttachRequest,

    /// How often checks are folded into profiles, stored and sent to watchers: the most a
    /// crash can lose, and how long a `capprof watch` waits at most for a change.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_POLL_INTERVAL.as_millis() as u64, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    poll_interval_ms: u64,

    /// How long the profiles of exited containers are kept (e.g. 7d, 12h, 30m); merged service
    /// and image profiles stay until `capprof reset`.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    retention: Duration,

    #[command(flatten)]
    listen: ListenArgs,
}

/// `7d`, `12h`, `30m`, `45s`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 7d, 12h, 30m or 45s"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(value.saturating_mul(seconds)))
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<Exit> {
    // Bind first: a second daemon fails here, before touching the tracer.
    let listeners = Listeners::bind(&args.listen.to_config()?)?;
    let docker = EngineAddress::from_env().context("reading DOCKER_HOST")?;
    let config = DaemonConfig {
        state_dir: args.state_dir.path,
        pin_root: args.pin_dir.path,
        attach: args.attach,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        retention: args.retention,
        ..DaemonConfig::default()
    };
    let service = DaemonService::start(config, listeners, docker).await?;
    let status = service.state().status();
    match &status.attach {
        Some(choice) => eprintln!(
            "capprof daemon: tracing via {}{}; API on {}",
            choice.explain(),
            if status.resumed {
                ", resumed from the pinned tracer"
            } else {
                ""
            },
            args.listen.socket.display()
        ),
        None => eprintln!(
            "capprof daemon: this kernel offers no way to trace (see the error above; `capprof doctor` \
             says more); serving stored profiles only on {}",
            args.listen.socket.display()
        ),
    }
    service.run_until(shutdown_requested()).await?;
    Ok(Exit::Success)
}

async fn shutdown_requested() {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping; the tracer stays pinned and keeps counting");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("7w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
    }
}
