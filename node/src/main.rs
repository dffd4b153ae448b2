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
mod remote_logs;
mod runtime;
mod store;

use clap::{CommandFactory, Parser, Subcommand};

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
    #[command(
        after_long_help = "Examples:\n  atoll daemon --site edge-1\n  atoll daemon --site edge-2 --join INVITATION --listen /ip4/0.0.0.0/udp/7481/quic-v1"
    )]
    Daemon(config::Flags),
    /// Run a local atoll of several sites on loopback (default 3), until Ctrl-C.
    #[command(after_long_help = "Example:\n  atoll dev --sites 5")]
    Dev(dev::Flags),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    #[command(
        after_long_help = "Example:\n  atoll completions bash > ~/.local/share/bash-completion/completions/atoll"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(cli::Cmd),
}

/// The C allocator's settings for a small resident set (docs/benchmarks.md,
/// "Idle memory"): a fixed mmap threshold, so that a large buffer (argon2's
/// 19 MiB) goes back to the system when freed instead of raising the
/// threshold and staying in the heap; and two arenas, not eight per core.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; called before
    // any thread is spawned.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let args = Cli::parse();
    if let Top::Completions { shell } = args.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "atoll", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
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
            Top::Completions { .. } => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command says what it does and shows an example; every flag and
    /// argument says what it is.
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        if cmd.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
            missing.push(format!("{path}: no description"));
        }
        let has_subcommands = cmd.get_subcommands().next().is_some();
        let example = cmd.get_after_long_help().map(|h| h.to_string()).unwrap_or_default();
        if !has_subcommands && !example.contains("atoll ") {
            missing.push(format!("{path}: no example in its long help"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(format!("{path} {id}: no description"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &path, missing);
        }
    }

    #[test]
    fn every_command_and_flag_explains_itself() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            walk(sub, "atoll", &mut missing);
        }
        assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
    }

    #[test]
    fn completions_are_generated_for_every_shell() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "atoll", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("instance") && text.contains("completions"), "{shell}");
        }
    }
}
