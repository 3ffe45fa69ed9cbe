//! The `gamezone-sdk` binary: the SDK sidecar of a game server pod, alone (the same as
//! `gamezone sdk`). Every game pod maps it, so it holds only the sidecar, not the operator.

use clap::Parser;
use gamezone_sdk::cli::SdkCli;

fn main() -> anyhow::Result<()> {
    let cli = SdkCli::parse();
    gamezone_telemetry::init(cli.log_format);
    SdkCli::runtime()?.block_on(cli.run())
}
