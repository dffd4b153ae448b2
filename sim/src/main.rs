//! `atoll-sim`: plays partition scenarios over the real peer core.

mod checks;
mod engine;
mod explore;
mod load;
mod recovery;
mod replicas;
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
        /// Make every peer break a rule, to show the checks catch it
        /// (builds with `--features sabotage` only).
        #[arg(long, value_enum)]
        sabotage: Option<Rule>,
    },
    /// Play random partition, crash and latency schedules over a scenario.
    Explore {
        scenario: String,
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Make every peer break a rule (builds with `--features sabotage` only).
        #[arg(long, value_enum)]
        sabotage: Option<Rule>,
    },
}

/// The rules a sabotaged peer breaks.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Rule {
    /// Admit without the escrow check.
    Escrow,
    /// Keep a pair's sync state after a lost message.
    SyncReset,
    /// Never ask peers for quota rights.
    Rebalance,
    /// Apply peers' changes without checking who wrote them.
    Provenance,
    /// Apply intents without checking their user's consent.
    Consent,
    /// Take users and role bindings without checking the realm's rules.
    Rules,
    /// Count transfers of rights as written, whether their giver held them or not.
    Backing,
    /// Never send a newer epoch of a document to a peer holding an older one.
    Epoch,
    /// Let every candidate reconcile each deployment at once.
    Reconcilers,
    /// Relay received changes to nobody and send no repair rounds.
    Relay,
}

fn sabotage(rule: Option<Rule>) -> anyhow::Result<atoll_proto::Sabotage> {
    use atoll_proto::Sabotage;
    let Some(rule) = rule else { return Ok(Sabotage::None) };
    if !cfg!(feature = "sabotage") {
        anyhow::bail!("--sabotage needs a simulator built with `--features sabotage`");
    }
    Ok(match rule {
        Rule::Escrow => Sabotage::Escrow,
        Rule::SyncReset => Sabotage::SyncReset,
        Rule::Rebalance => Sabotage::Rebalance,
        Rule::Provenance => Sabotage::Provenance,
        Rule::Consent => Sabotage::Consent,
        Rule::Rules => Sabotage::Rules,
        Rule::Backing => Sabotage::Backing,
        Rule::Epoch => Sabotage::Epoch,
        Rule::Reconcilers => Sabotage::Reconcilers,
        Rule::Relay => Sabotage::Relay,
    })
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
        Cmd::Run { scenario, seed, explored, sites, json, svg, sabotage: rule } => {
            let mut sc = scenario::Scenario::load(&scenario)?;
            sc.sabotage = sabotage(rule)?;
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
        Cmd::Explore { scenario, seeds, from, sabotage: rule } => {
            let mut sc = scenario::Scenario::load(&scenario)?;
            sc.sabotage = sabotage(rule)?;
            Ok(explore::explore(&sc, from, seeds))
        }
    }
}
