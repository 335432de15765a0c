//! The bank account: the example aggregate of Annals' docs, quickstart, CLI and benchmarks.
//!
//! An account is opened for an owner, takes deposits and withdrawals, refuses to go below
//! zero, and can be closed once it is empty.
//!
//! ```
//! use annals::{CommandContext, InMemoryStore, Repository};
//! use annals_examples::bank_account::{AccountCommand, AccountError, BankAccount};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let accounts: Repository<BankAccount, _> = Repository::new(InMemoryStore::new());
//! accounts.execute("42", AccountCommand::open("ada"), CommandContext::new()).await?;
//! accounts.execute("42", AccountCommand::Deposit { amount: 100 }, CommandContext::new()).await?;
//! let refused = accounts
//!     .execute("42", AccountCommand::Withdraw { amount: 150 }, CommandContext::new())
//!     .await
//!     .unwrap_err();
//! assert_eq!(
//!     refused.into_rejection(),
//!     Some(AccountError::InsufficientFunds { balance: 100, requested: 150 })
//! );
//! assert_eq!(accounts.load("42").await?.state.balance(), 100);
//! # Ok(())
//! # }
//! ```

use annals::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// Where an account is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not opened yet.
    #[default]
    New,
    /// Open: takes deposits and withdrawals.
    Open,
    /// Closed for good.
    Closed,
}

/// A bank account's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    status: Status,
    owner: String,
    balance: u64,
    /// Deposits and withdrawals so far, to make snapshots worth checking.
    movements: u64,
}

impl BankAccount {
    /// Where the account is in its life.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Its owner (empty before it is opened).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Its balance, in cents.
    pub fn balance(&self) -> u64 {
        self.balance
    }

    /// How many deposits and withdrawals it has seen.
    pub fn movements(&self) -> u64 {
        self.movements
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.status == Status::Open
    }
}

/// What an account can be asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    /// Opens the account for `owner`.
    Open {
        /// Who owns it.
        owner: String,
    },
    /// Puts `amount` cents in.
    Deposit {
        /// How much, in cents (more than 0).
        amount: u64,
    },
    /// Takes `amount` cents out, if the balance allows.
    Withdraw {
        /// How much, in cents (more than 0).
        amount: u64,
    },
    /// Closes the account, which must be empty.
    Close,
}

impl AccountCommand {
    /// [`AccountCommand::Open`] for `owner`.
    pub fn open(owner: impl Into<String>) -> Self {
        AccountCommand::Open {
            owner: owner.into(),
        }
    }
}

/// What happened to an account. Stored payloads hold the variant's fields alone: a
/// `Deposited` event is stored as `{"amount":100}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money was put in.
    Deposited {
        /// How much, in cents.
        amount: u64,
    },
    /// Money was taken out.
    Withdrawn {
        /// How much, in cents.
        amount: u64,
    },
    /// The account was closed.
    Closed,
}

/// Why an account refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account is already open (or was closed).
    #[error("the account is already opened")]
    AlreadyOpened,
    /// The account has not been opened.
    #[error("the account is not open")]
    NotOpen,
    /// The account is closed.
    #[error("the account is closed")]
    Closed,
    /// An amount of zero.
    #[error("the amount must be more than zero")]
    ZeroAmount,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: the balance is {balance}, {requested} was requested")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// A deposit that would overflow the balance.
    #[error("the deposit would overflow the balance")]
    BalanceOverflow,
    /// Closing an account that still holds money.
    #[error("the account still holds {balance}; withdraw it before closing")]
    NotEmpty {
        /// The balance.
        balance: u64,
    },
}

impl Aggregate for BankAccount {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => match self.status {
                Status::New => Ok(vec![AccountEvent::Opened {
                    owner: owner.clone(),
                }]),
                Status::Open | Status::Closed => Err(AccountError::AlreadyOpened),
            },
            AccountCommand::Deposit { amount } => {
                self.check_open()?;
                if *amount == 0 {
                    return Err(AccountError::ZeroAmount);
                }
                self.balance
                    .checked_add(*amount)
                    .ok_or(AccountError::BalanceOverflow)?;
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw { amount } => {
                self.check_open()?;
                if *amount == 0 {
                    return Err(AccountError::ZeroAmount);
                }
                if *amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        requested: *amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
            AccountCommand::Close => {
                self.check_open()?;
                if self.balance > 0 {
                    return Err(AccountError::NotEmpty {
                        balance: self.balance,
                    });
                }
                Ok(vec![AccountEvent::Closed])
            }
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.status = Status::Open;
                self.owner.clone_from(owner);
            }
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(*amount);
                self.movements += 1;
            }
            AccountEvent::Withdrawn { amount } => {
                self.balance = self.balance.saturating_sub(*amount);
                self.movements += 1;
            }
            AccountEvent::Closed => self.status = Status::Closed,
        }
    }
}

impl BankAccount {
    fn check_open(&self) -> Result<(), AccountError> {
        match self.status {
            Status::Open => Ok(()),
            Status::New => Err(AccountError::NotOpen),
            Status::Closed => Err(AccountError::Closed),
        }
    }
}
