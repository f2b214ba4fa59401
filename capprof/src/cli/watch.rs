//! `capprof watch`: a recommendation, live.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use capprof::{
    api::{ApiClient, ConnectArgs},
    recommend::{Recommendation, format_time},
    report_output::{self, ReportFormat, subject_label},
};
use futures_util::StreamExt;

use super::Exit;

/// Watch a container's or service's cap_add change live, until Ctrl-C.
///
/// On a terminal the report is redrawn in place each time it changes; otherwise one line is
/// printed per change: `<time> <target> cap_add: CHOWN NET_BIND_SERVICE (<n> checks)`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_CODES_HELP)]
pub struct WatchArgs {
    /// A container, project/service, image, or `host`.
    target: String,

    /// Also update when only the counts behind the advice change.
    #[arg(long)]
    counts: bool,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: WatchArgs) -> anyhow::Result<Exit> {
    let mut client = ApiClient::connect(&args.connect.target()).await?;
    let updates = client.watch(&args.target, args.counts).await?;
    tokio::pin!(updates);
    let redraw = std::io::stdout().is_terminal();
    loop {
        let update = tokio::select! {
            update = updates.next() => update,
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Success),
        };
        let recommendation = match update {
            Some(update) => update?,
            None => anyhow::bail!("the daemon ended the watch without saying why"),
        };
        let mut out = std::io::stdout().lock();
        match redraw {
            true => write!(out, "{}", screen(&recommendation))?,
            false => writeln!(out, "{}", plain_line(&recommendation))?,
        }
        out.flush().context("writing to stdout")?;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// Clears the terminal and draws the report under a header.
fn screen(recommendation: &Recommendation) -> String {
    format!(
        "\x1b[H\x1b[2Jcapprof watch, updated {} (Ctrl-C to stop)\n\n{}",
        format_time(now_ms()),
        report_output::render(recommendation, ReportFormat::Table)
    )
}

fn plain_line(recommendation: &Recommendation) -> String {
    let names = recommendation.cap_add_names();
    format!(
        "{} {} cap_add: {} ({} checks)",
        format_time(now_ms()),
        subject_label(&recommendation.subject, &recommendation.info),
        match names.is_empty() {
            true => "(none)".to_owned(),
            false => names.join(" "),
        },
        recommendation.total_checks
    )
}
