//! `capprof reset`: forget a profile and start profiling afresh.

use capprof::api::{ApiClient, ConnectArgs};

use super::Exit;

/// Forget the profile of a container, Compose service, image or the host.
///
/// Only that profile is forgotten: resetting a container leaves its service's and image's
/// merged profiles alone.
#[derive(Debug, clap::Args)]
#[command(after_long_help = super::EXIT_CODES_HELP)]
pub struct ResetArgs {
    /// A container, project/service, image, or `host`.
    target: String,

    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: ResetArgs) -> anyhow::Result<Exit> {
    let mut client = ApiClient::connect(&args.connect.target()).await?;
    let (subject, existed) = client.reset(&args.target).await?;
    match existed {
        true => println!("forgot the profile of {subject}"),
        false => println!("{subject} had no profile to forget"),
    }
    Ok(Exit::Success)
}
