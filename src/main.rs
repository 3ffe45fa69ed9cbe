//! The `gamezone` binary: the operator (`run`) and its tools (`crd`, `render`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = gamezone::cli::Cli::parse();
    gamezone::telemetry::init(cli.log_format);
    cli.runtime()?.block_on(cli.run())
}
