//! `game-server <type> <id> [args…]`: an example game process for GameZone (see README.md);
//! type `bot` runs a load-test bot instead (`src/bot.rs`).

mod artifacts;
mod bot;
mod http;
mod ports;
mod protocol;
mod sdk;
mod server;
mod settings;
mod tally;
mod topology;

use std::collections::BTreeMap;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .init();

    // Non-UTF-8 variables are none of ours; skip them rather than fail.
    let env: BTreeMap<String, String> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let settings = match settings::Settings::parse(&env, &args) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot start");
            return ExitCode::from(2);
        }
    };
    if settings.identity.type_ == bot::BOT_TYPE {
        let config = match bot::BotConfig::parse(&settings.extra_args) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start");
                return ExitCode::from(2);
            }
        };
        return match bot::run(settings, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "bot failed");
                ExitCode::FAILURE
            }
        };
    }
    match server::run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}
