//! `atoll intent list|show`, and the `--site`/`--wait` options of operations
//! that may be carried out by another site.

use atoll_proto::api::IntentView;
use clap::{Args, Subcommand};

use super::Global;
use super::client::{Api, Remote};
use super::output::{ago, print};
use super::show;

#[derive(Debug, Subcommand)]
pub enum IntentCmd {
    /// Cross-site operations of the realm, as far as the serving site knows (the documents it holds: its own, those it keeps, those sent its way).
    #[command(after_long_help = "Example:\n  atoll intent list --output json")]
    List,
    /// One operation and its outcome.
    #[command(after_long_help = "Example:\n  atoll intent show site-1.0123456789abcdef --wait 30")]
    Show {
        /// The intent id (printed when an operation is still pending).
        id: String,
        /// Seconds to wait for it to settle.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

// Where an operation runs (a plain comment: a doc comment here would become
// the description of every subcommand that flattens it).
#[derive(Debug, Clone, Args)]
pub struct At {
    /// The site that carries it out (default: the serving site for a create,
    /// the site that has the instance for other operations).
    #[arg(long)]
    pub site: Option<String>,
    /// Seconds to wait for another site's outcome before reporting it pending.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

impl At {
    /// The query string for the API (empty for the serving site).
    pub fn query(&self) -> String {
        match &self.site {
            Some(s) => format!("?site={s}&wait={}", self.wait),
            None => String::new(),
        }
    }
}

/// The result of a remote operation, or a note that it is still pending.
pub fn settled<T>(r: Remote<T>) -> Option<T> {
    match r {
        Remote::Done(v) => Some(v),
        Remote::Pending(v) => {
            println!(
                "Intent {} is {} on {} ({}); follow it with: atoll intent show {} --wait 30",
                v.intent,
                state(&v),
                v.target,
                v.detail,
                v.intent
            );
            None
        }
    }
}

fn state(v: &IntentView) -> String {
    super::json_str(&v.state)
}

pub async fn run(g: &Global, api: &Api, c: IntentCmd) -> anyhow::Result<()> {
    match c {
        IntentCmd::List => {
            let list: Vec<IntentView> = api.get("/v1/intents").await?;
            let headers = ["INTENT", "FROM", "TO", "USER", "OPERATION", "STATE", "AGE", "DETAIL"];
            print(g.output, &list, &headers, || {
                list.iter()
                    .map(|v| {
                        vec![
                            v.intent.clone(),
                            v.requester.to_string(),
                            v.target.to_string(),
                            v.user.clone(),
                            v.summary.clone(),
                            state(v),
                            ago(v.created_at),
                            v.detail.clone(),
                        ]
                    })
                    .collect()
            });
        }
        IntentCmd::Show { id, wait } => {
            let v: IntentView = api.get(&format!("/v1/intents/{id}?wait={wait}")).await?;
            show(g.output, &v)?;
        }
    }
    Ok(())
}
