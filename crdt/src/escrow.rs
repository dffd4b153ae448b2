//! Quota escrow (docs/architecture.md, "Quota escrow"): a project's global total is split into rights
//! held by sites, and a site admits work only against rights it holds.
//!
//! A site's rights for a project are
//! `granted` (grants in the realm naming it) + `received` (transfers to it, read
//! from the givers' documents) - `given` (transfers it wrote) - `consumed` (its
//! instances). Only the site itself writes its grants, its transfers and its
//! instances, and it checks [`Account::admit`] before each; the other term only
//! grows as it learns more. Hence in any merged state the sum of consumption is at
//! most the sum of grants, whatever the order in which sites met.

use crate::doc::DocError;
use crate::entity::Resources;
use crate::realm::Realm;
use crate::site::SiteDoc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    #[error(
        "local quota share exhausted for project {project}: requested {requested}, \
         this site holds {available}"
    )]
    Exhausted { project: String, requested: Resources, available: Resources },
    #[error("quota values must not be negative (got {0})")]
    Negative(Resources),
    #[error("quota values must lie within ±{limit} (got {0})", limit = Resources::LIMIT)]
    OutOfRange(Resources),
    #[error("quota arithmetic for project {0} overflows: the documents hold impossible figures")]
    Overflow(String),
}

/// One site's rights for one project.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Account {
    pub granted: Resources,
    pub received: Resources,
    pub given: Resources,
    pub consumed: Resources,
}

impl Account {
    /// Reads the account of `own.site` for `project` from a site's local view.
    /// `others` are the replicas it holds of other sites' documents.
    pub fn read<'a>(
        realm: &Realm,
        own: &SiteDoc,
        others: impl IntoIterator<Item = &'a SiteDoc>,
        project: &str,
    ) -> Result<Account, DocError> {
        let overflow = || DocError::Overflow(format!("the rights of {} for project {project}", own.site));
        let granted = realm.granted(project, &own.site)?;
        let mut received = Resources::ZERO;
        for other in others {
            if other.site != own.site {
                received = received.checked_plus(other.given_to(project, &own.site)?).ok_or_else(overflow)?;
            }
        }
        Ok(Account { granted, received, given: own.given(project)?, consumed: own.consumed(project)? })
    }

    /// The rights held free: None when the figures overflow (only a document
    /// with impossible figures does that; such an account admits nothing).
    pub fn checked_available(&self) -> Option<Resources> {
        self.granted.checked_plus(self.received)?.checked_minus(self.given)?.checked_minus(self.consumed)
    }

    /// The rights held free, for display ([`Account::admit`] decides).
    pub fn available(&self) -> Resources {
        self.checked_available().unwrap_or(Resources::ZERO)
    }

    /// Whether `request` fits the rights held here (admission, or giving rights away).
    pub fn admit(&self, project: &str, request: Resources) -> Result<(), EscrowError> {
        let available = self.checked_available().ok_or_else(|| EscrowError::Overflow(project.to_owned()))?;
        if !request.is_non_negative() {
            return Err(EscrowError::Negative(request));
        }
        if available.covers(request) {
            Ok(())
        } else {
            Err(EscrowError::Exhausted { project: project.to_owned(), requested: request, available })
        }
    }
}

/// The grant a site writes to move a project's total from `total` to `new_total`.
/// Raising is always allowed; lowering takes only rights this site holds free.
pub fn quota_change(
    project: &str,
    total: Resources,
    new_total: Resources,
    account: &Account,
) -> Result<Resources, EscrowError> {
    if !new_total.is_non_negative() {
        return Err(EscrowError::Negative(new_total));
    }
    if !new_total.within_limit() {
        return Err(EscrowError::OutOfRange(new_total));
    }
    let delta = new_total.checked_minus(total).ok_or_else(|| EscrowError::Overflow(project.to_owned()))?;
    let lowering =
        Resources::new((-delta.instances).max(0), (-delta.cpus).max(0), (-delta.memory_mib).max(0));
    account.admit(project, lowering)?;
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(granted: Resources, consumed: Resources) -> Account {
        Account { granted, consumed, ..Account::default() }
    }

    #[test]
    fn admits_within_rights_only() {
        let a = account(Resources::new(2, 4, 1024), Resources::new(1, 1, 512));
        assert!(a.admit("p", Resources::new(1, 3, 512)).is_ok());
        let err = a.admit("p", Resources::new(1, 4, 1)).unwrap_err();
        assert!(err.to_string().contains("local quota share exhausted"));
    }

    #[test]
    fn lowering_takes_only_free_rights() {
        let a = account(Resources::new(4, 4, 4096), Resources::new(3, 3, 3000));
        let total = Resources::new(4, 4, 4096);
        assert_eq!(
            quota_change("p", total, Resources::new(3, 10, 4096), &a).unwrap(),
            Resources::new(-1, 6, 0)
        );
        assert!(quota_change("p", total, Resources::new(2, 4, 4096), &a).is_err());
        assert!(quota_change("p", total, Resources::new(-1, 4, 4096), &a).is_err());
        assert!(quota_change("p", total, Resources::new(i64::MAX, 4, 4096), &a).is_err());
    }

    #[test]
    fn impossible_figures_admit_nothing() {
        let a = Account {
            granted: Resources::new(i64::MAX, 1, 1),
            received: Resources::new(1, 0, 0),
            ..Account::default()
        };
        assert_eq!(a.checked_available(), None);
        assert!(matches!(a.admit("p", Resources::new(1, 0, 0)), Err(EscrowError::Overflow(_))));
        let b = account(Resources::new(2, 2, 2), Resources::ZERO);
        assert!(matches!(b.admit("p", Resources::new(-5, 0, 0)), Err(EscrowError::Negative(_))));
    }
}
