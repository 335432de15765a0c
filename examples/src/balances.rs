//! The balances projection: each bank account's balance in a [`SledModel`] tree, from the
//! account events decoded exactly as loading decodes them.
//!
//! The quickstart runs it in-process; the `annals-bank` CLI registers it, so
//! `annals-bank projections list | run | rebuild balances` work on a bank's store.

use std::collections::BTreeMap;

use annals::{BoxError, Filter, RecordedEvent, Repository};
use annals_projections::{Projection, ProjectionName, SledModel, SledTx};
use annals_sled::SledEventStore;

use crate::bank_account::{AccountEvent, BankAccount};

/// The projection's name: its checkpoints and data are kept under it.
pub const NAME: &str = "balances";

/// The read model's tree: account id (`ada1` for `account-ada1`) -> balance (i64, big-endian).
pub const TREE: &str = "balances";

/// The balances projection: typed events (decoded as loading decodes them), one balance per
/// account.
#[derive(Debug)]
pub struct Balances {
    name: ProjectionName,
    accounts: Repository<BankAccount, SledEventStore>,
}

impl Balances {
    /// The projection over `store`'s accounts.
    pub fn new(store: &SledEventStore) -> Self {
        Balances {
            name: Self::projection_name(),
            accounts: Repository::new(store.clone()),
        }
    }

    /// Its name, [`NAME`].
    #[allow(clippy::missing_panics_doc)] // a constant, valid name
    pub fn projection_name() -> ProjectionName {
        ProjectionName::new(NAME).expect("`balances` is a valid projection name")
    }

    /// Every balance the read model holds, by account id.
    ///
    /// # Errors
    ///
    /// The model's failure, or a value that is not a balance.
    pub fn read(model: &SledModel) -> Result<BTreeMap<String, i64>, BoxError> {
        let mut balances = BTreeMap::new();
        for (id, balance) in model.to_map(TREE)? {
            balances.insert(
                String::from_utf8(id)?,
                i64::from_be_bytes(balance.as_slice().try_into()?),
            );
        }
        Ok(balances)
    }
}

impl Projection<SledModel> for Balances {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn filter(&self) -> Filter {
        Filter::all().category("account")
    }

    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        for event in events {
            let id = event.stream_id.as_str().trim_start_matches("account-");
            let balance = match tx.get(TREE, id)? {
                Some(bytes) => i64::from_be_bytes(bytes.as_slice().try_into()?),
                None => 0,
            };
            let balance = match self.accounts.decode(event)? {
                AccountEvent::Opened { .. } | AccountEvent::Closed => balance,
                AccountEvent::Deposited { amount } => balance + i64::try_from(amount)?,
                AccountEvent::Withdrawn { amount } => balance - i64::try_from(amount)?,
            };
            tx.insert(TREE, id, balance.to_be_bytes())?;
        }
        Ok(())
    }
}
