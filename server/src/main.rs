//! `herald`: parse the configuration, set up logging, and run the server until SIGINT/SIGTERM.

use clap::Parser;
use herald::config::Config;
use tracing_subscriber::EnvFilter;

/// mimalloc keeps per-connection memory low under connection churn, where glibc's allocator
/// fragments (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn")),
        )
        .init();
    let config = Config::parse();
    // With one CPU to run on (a container limit, or `taskset` in the benchmarks), a
    // work-stealing scheduler has nobody to steal for and only adds synchronisation; tokio's
    // single-threaded scheduler runs the same code with less. With more, use them all.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runtime = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all().build()?.block_on(async {
        let addr = herald::listen_addr(&config);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        herald::run(config, listener, herald::shutdown_signal()).await
    })
}
