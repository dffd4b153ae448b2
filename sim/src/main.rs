//! `atoll-sim`: plays partition scenarios over the real peer core.

mod checks;
mod engine;
mod explore;
mod report;
mod scenario;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "atoll-sim", about = "Atoll's partition simulator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Play one scenario and check it.
    Run {
        scenario: String,
        /// Overrides the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Replays the random schedule `explore` played under this seed.
        #[arg(long)]
        explored: Option<u64>,
        /// Overrides the number of sites (scaling runs).
        #[arg(long)]
        sites: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write the convergence plot here (SVG).
        #[arg(long)]
        svg: Option<String>,
    },
    /// Play random partition, crash and latency schedules over a scenario.
    Explore {
        scenario: String,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.cmd {
        Cmd::Run { scenario, seed, explored, sites, json, svg } => {
            let mut sc = scenario::Scenario::load(&scenario)?;
            if let Some(n) = sites {
                sc.sites.count = n;
                sc.validate()?;
            }
            if let Some(s) = seed {
                sc.seed = s;
            }
            if let Some(s) = explored {
                sc = explore::randomize(&sc, s);
            }
            let report = explore::play(sc);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            if let Some(path) = svg {
                std::fs::write(&path, report.svg())?;
            }
            Ok(report.passed())
        }
        Cmd::Explore { scenario, seeds, from } => {
            let sc = scenario::Scenario::load(&scenario)?;
            Ok(explore::explore(&sc, from, seeds))
        }
    }
}
