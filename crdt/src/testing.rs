//! What the crate's unit tests share.

use crate::entity::{Member, SiteId};
use crate::{Doc, Gate, Incoming};

/// A gate that admits every change (the tests of what comes after it).
pub(crate) struct Anyone;

impl Gate for Anyone {
    fn admit(&mut self, _: &Doc, _: &Incoming<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// A member record named `site`, reachable at `addr`.
pub(crate) fn member(site: &str, addr: &str) -> Member {
    Member {
        site: SiteId::new(site).unwrap(),
        public_key: "ab".repeat(32),
        region: "eu".into(),
        operator: "op".into(),
        joined_at: 7,
        addrs: vec![addr.into()],
        invitation: None,
        api_cert: None,
    }
}
