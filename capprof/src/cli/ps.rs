//! `capprof ps`: the containers the daemon knows, running and remembered.

use capprof::{
    api::{ApiClient, ConnectArgs},
    recommend::format_time,
};
use capprof_proto::v1 as pb;

use super::Exit;

/// List running and remembered containers with their Compose service and recommended cap_add.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_CODES_HELP)]
pub struct PsArgs {
    /// Only the containers running now.
    #[arg(long)]
    running: bool,

    /// An aligned table, or one JSON array.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,

    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub async fn run(args: PsArgs) -> anyhow::Result<Exit> {
    let mut client = ApiClient::connect(&args.connect.target()).await?;
    let containers = client.containers(args.running).await?;
    match args.format {
        ListFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &containers.iter().map(container_json).collect::<Vec<_>>()
            )?
        ),
        ListFormat::Table => print!("{}", table(&containers)),
    }
    Ok(Exit::Success)
}

fn service(container: &pb::Container) -> String {
    match (&container.compose_project, &container.compose_service) {
        (Some(project), Some(service)) => format!("{project}/{service}"),
        _ => "-".to_owned(),
    }
}

fn state(container: &pb::Container) -> String {
    match (container.running, container.exited_at_ms) {
        (true, _) => "running".to_owned(),
        (false, Some(exited)) => format!("exited {}", format_time(exited)),
        (false, None) => "gone".to_owned(),
    }
}

fn cap_add(container: &pb::Container) -> String {
    match (container.total_checks, container.cap_add.is_empty()) {
        (0, _) => "(no checks yet)".to_owned(),
        (_, true) => "(none)".to_owned(),
        (_, false) => container.cap_add.join(","),
    }
}

fn table(containers: &[pb::Container]) -> String {
    if containers.is_empty() {
        return "No containers known yet: start some while the capprof daemon runs.\n".to_owned();
    }
    let rows: Vec<[String; 7]> = containers
        .iter()
        .map(|container| {
            [
                container.id[..container.id.len().min(12)].to_owned(),
                container.name.clone(),
                service(container),
                container.image.clone(),
                state(container),
                container.total_checks.to_string(),
                cap_add(container),
            ]
        })
        .collect();
    let header = [
        "CONTAINER",
        "NAME",
        "SERVICE",
        "IMAGE",
        "STATE",
        "CHECKS",
        "CAP_ADD",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

fn container_json(container: &pb::Container) -> serde_json::Value {
    serde_json::json!({
        "id": container.id,
        "name": container.name,
        "image": container.image,
        "compose_project": container.compose_project,
        "compose_service": container.compose_service,
        "running": container.running,
        "first_seen_ms": container.first_seen_ms,
        "last_seen_ms": container.last_seen_ms,
        "exited_at_ms": container.exited_at_ms,
        "total_checks": container.total_checks,
        "cap_add": container.cap_add,
    })
}
