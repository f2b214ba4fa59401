//! `capprof report`: the minimal `cap_add` for a container or Compose service, with evidence.

use capprof::{
    api::{ApiClient, ConnectArgs},
    report_output::{self, ReportFormat},
};

use super::Exit;

/// Print the minimal cap_add for a container or Compose service, each with its reason
///
/// Examples:
///   capprof report shop/web                      a Compose service (project/service)
///   capprof report shop-web-1 --format compose   a container, as a Compose fragment
///   capprof report 3f2a --format json            a container id prefix, as JSON
///
/// TARGET is a container (full id, unique id prefix of 4+ hex digits, or name), a Compose
/// service as project/service (or just service when one project has it), an image, or `host`.
/// `container:`, `service:` and `image:` prefixes say which kind is meant.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, after_long_help = super::EXIT_CODES_HELP)]
pub struct ReportArgs {
    /// A container, project/service, image, or `host`.
    target: String,

    /// How to print the recommendation.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: ReportArgs) -> anyhow::Result<Exit> {
    let mut client = ApiClient::connect(&args.connect.target()).await?;
    let recommendation = client.recommendation(&args.target).await?;
    print!("{}", report_output::render(&recommendation, args.format));
    Ok(Exit::Success)
}
