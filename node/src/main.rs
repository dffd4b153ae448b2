//! `atoll`: the peer daemon of an edge site, and the CLI that talks to any site.

mod api;
mod cli;
mod config;
mod daemon;
mod dev;
mod driver;
mod fetch;
mod metrics;
mod net;
mod runtime;
mod store;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "atoll", version, about = "Atoll: a peer-to-peer infrastructure manager for edge sites")]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run this site's peer daemon.
    Daemon(config::Flags),
    /// Run a local atoll of several sites on loopback (default 3), until Ctrl-C.
    Dev(dev::Flags),
    #[command(flatten)]
    Client(cli::Cmd),
}

fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.cmd {
            Top::Daemon(flags) => {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG")
                            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                    )
                    .with_writer(std::io::stderr)
                    .init();
                let settings = config::Settings::resolve(&flags)?;
                daemon::run(settings).await
            }
            Top::Dev(flags) => dev::run(flags).await,
            Top::Client(cmd) => cli::run(args.global, cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
