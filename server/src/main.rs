//! `herald`: parse the configuration, set up logging, and run the server until SIGINT/SIGTERM;
//! or, with `herald keys ...`, manage API keys (in the database, or in Redis with `--store redis`); or, with `herald publish` and
//! `herald subscribe`, be a command-line client of a running server.

use clap::Parser;
use herald::config::{Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc keeps per-connection memory low under connection churn, where glibc's allocator
/// fragments (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => logs.init(),
        // Fields at the top level of each line, next to level, target and message.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    match &config.command {
        Some(Command::Keys(cmd)) => return herald::auth::cli::keys(&config, cmd),
        Some(Command::Publish(args)) => return herald::cli::publish(args).await,
        Some(Command::Subscribe(args)) => return herald::cli::subscribe(args).await,
        None => {}
    }
    #[cfg(feature = "bench-unchecked-publish")]
    tracing::warn!(
        "built with bench-unchecked-publish: anyone can publish to any topic over HTTP; for benchmarks only"
    );
    let addr = herald::listen_addr(&config);
    let listener = herald::listener::bind(addr)?;
    herald::run(config, listener, herald::shutdown_signal()).await
}
