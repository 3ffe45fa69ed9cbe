//! The `gamezone-sdk` binary: the SDK sidecar of a game server pod (`gamezone sdk`), alone.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = gamezone::cli::SdkCli::parse();
    gamezone::telemetry::init(cli.log_format);
    gamezone::cli::SdkCli::runtime()?.block_on(cli.run())
}
