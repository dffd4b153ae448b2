//! The contract between the peer core and a workload driver. The core decides
//! what should run; the driver makes it so and reports what happened.

use std::collections::BTreeMap;

use atoll_crdt::{ImageFormat, Kind};
use serde::{Deserialize, Serialize};

/// Everything a driver needs to start an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// `project/name`, unique on the site.
    pub key: String,
    pub kind: Kind,
    pub image_digest: String,
    pub format: ImageFormat,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<String>,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
}

/// `run` numbers the runs of an instance; events of an older run are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverCmd {
    Start {
        spec: InstanceSpec,
        run: u64,
    },
    /// Re-attach to a workload started before the daemon restarted.
    Recover {
        key: String,
        kind: Kind,
        run: u64,
        handle: String,
    },
    /// Graceful stop, forced after `grace_ms`.
    Stop {
        key: String,
        kind: Kind,
        run: u64,
        grace_ms: u64,
    },
    /// Stop if running and remove everything the driver keeps for it.
    Destroy {
        key: String,
        kind: Kind,
        run: u64,
    },
}

impl DriverCmd {
    pub fn key(&self) -> &str {
        match self {
            DriverCmd::Start { spec, .. } => &spec.key,
            DriverCmd::Recover { key, .. } | DriverCmd::Stop { key, .. } | DriverCmd::Destroy { key, .. } => {
                key
            }
        }
    }

    pub fn run(&self) -> u64 {
        match self {
            DriverCmd::Start { run, .. }
            | DriverCmd::Recover { run, .. }
            | DriverCmd::Stop { run, .. }
            | DriverCmd::Destroy { run, .. } => *run,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverEvent {
    /// Running; `handle` lets a later daemon re-attach.
    Started {
        handle: String,
        detail: String,
    },
    /// Ended by itself; `code` is unknown for a re-attached workload.
    Exited {
        code: Option<i32>,
        detail: String,
    },
    /// Could not be started or recovered.
    Failed {
        reason: String,
    },
    Stopped,
    Destroyed,
}
