//! The bank account through the given/when/then harness and through a real repository on the
//! in-memory store.

use annals::{CommandContext, EventStore, InMemoryStore, ReadStream, Repository, Version};
use annals_examples::bank_account::{
    AccountCommand, AccountError, AccountEvent, BankAccount, Status,
};
use annals_testkit::harness::given;
use futures::TryStreamExt;
use uuid::Uuid;

fn opened() -> AccountEvent {
    AccountEvent::Opened {
        owner: "ada".into(),
    }
}

#[test]
fn opening_a_new_account() {
    let state = given::<BankAccount>([])
        .when(AccountCommand::open("ada"))
        .then_expect([opened()]);
    assert_eq!(state.status(), Status::Open);
    assert_eq!(state.owner(), "ada");
}

#[test]
fn an_account_opens_once() {
    given::<BankAccount>([opened()])
        .when(AccountCommand::open("bob"))
        .then_expect_error(AccountError::AlreadyOpened);
}

#[test]
fn deposits_and_withdrawals_move_the_balance() {
    let state = given::<BankAccount>([opened(), AccountEvent::Deposited { amount: 100 }])
        .when(AccountCommand::Withdraw { amount: 40 })
        .then_expect([AccountEvent::Withdrawn { amount: 40 }]);
    assert_eq!(state.balance(), 60);
    given::<BankAccount>([opened()])
        .when(AccountCommand::Deposit { amount: 0 })
        .then_expect_error(AccountError::ZeroAmount);
    given::<BankAccount>([])
        .when(AccountCommand::Deposit { amount: 5 })
        .then_expect_error(AccountError::NotOpen);
    given::<BankAccount>([opened(), AccountEvent::Deposited { amount: u64::MAX }])
        .when(AccountCommand::Deposit { amount: 1 })
        .then_expect_error(AccountError::BalanceOverflow);
}

#[test]
fn a_withdrawal_beyond_the_balance_is_refused() {
    given::<BankAccount>([opened(), AccountEvent::Deposited { amount: 100 }])
        .when(AccountCommand::Withdraw { amount: 101 })
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 100,
            requested: 101,
        });
}

#[test]
fn only_an_empty_account_closes_and_a_closed_one_takes_nothing() {
    given::<BankAccount>([opened(), AccountEvent::Deposited { amount: 1 }])
        .when(AccountCommand::Close)
        .then_expect_error(AccountError::NotEmpty { balance: 1 });
    let closed = given::<BankAccount>([opened()])
        .when(AccountCommand::Close)
        .then_expect([AccountEvent::Closed]);
    assert_eq!(closed.status(), Status::Closed);
    given::<BankAccount>([opened(), AccountEvent::Closed])
        .when(AccountCommand::Deposit { amount: 5 })
        .then_expect_error(AccountError::Closed);
    given::<BankAccount>([opened(), AccountEvent::Closed])
        .when(AccountCommand::open("ada"))
        .then_expect_error(AccountError::AlreadyOpened);
}

#[test]
#[should_panic(expected = "but the command was rejected")]
fn the_harness_reports_an_unexpected_rejection() {
    given::<BankAccount>([])
        .when(AccountCommand::Withdraw { amount: 1 })
        .then_expect([AccountEvent::Withdrawn { amount: 1 }]);
}

#[test]
#[should_panic(expected = "but the command emitted")]
fn the_harness_reports_other_events() {
    given::<BankAccount>([opened()])
        .when(AccountCommand::Deposit { amount: 2 })
        .then_expect([AccountEvent::Deposited { amount: 3 }]);
}

#[tokio::test]
async fn the_account_lives_in_a_real_repository() -> anyhow::Result<()> {
    let store = InMemoryStore::new();
    let accounts: Repository<BankAccount, _> = Repository::new(store.clone());
    let request = Uuid::now_v7();
    let context = || {
        CommandContext::new()
            .with_correlation_id(request)
            .with_header("user", "ada")
    };

    let open = accounts
        .execute("7", AccountCommand::open("ada"), context())
        .await?;
    assert_eq!(open.events, [opened()]);
    assert_eq!(open.version, Version::new(1));
    accounts
        .execute("7", AccountCommand::Deposit { amount: 100 }, context())
        .await?;
    let refused = accounts
        .execute("7", AccountCommand::Withdraw { amount: 250 }, context())
        .await
        .expect_err("insufficient funds");
    assert_eq!(
        refused.rejection(),
        Some(&AccountError::InsufficientFunds {
            balance: 100,
            requested: 250
        })
    );
    let command_id = Uuid::now_v7();
    let withdrawn = accounts
        .execute(
            "7",
            AccountCommand::Withdraw { amount: 30 },
            context().with_command_id(command_id),
        )
        .await?;
    assert_eq!(withdrawn.state.balance(), 70);
    assert_eq!(withdrawn.version, Version::new(3));

    // What the store holds: the variant's payload alone, under the variant's name, with the
    // context in the metadata.
    let stream = accounts.stream_id("7")?;
    assert_eq!(stream.as_str(), "account-7");
    let stored: Vec<_> = store
        .read_stream(&stream, ReadStream::forward())
        .try_collect()
        .await?;
    assert_eq!(stored.len(), 3, "the refused withdrawal recorded nothing");
    assert_eq!(stored[1].event_type, "Deposited");
    assert_eq!(stored[1].schema_version, 1);
    assert_eq!(&stored[1].payload[..], br#"{"amount":100}"#);
    assert_eq!(stored[1].content_type, "application/json");
    for event in &stored {
        assert_eq!(event.metadata.correlation_id, Some(request));
        assert_eq!(
            event.metadata.headers.get("user").map(String::as_str),
            Some("ada")
        );
    }
    assert_eq!(stored[2].metadata.causation_id, Some(command_id));
    assert_eq!(stored[2].id, annals::EventId::derived(command_id, 0));
    assert_eq!(stored[0].metadata.causation_id, None);

    // A repository with a cold cache reads the same state back.
    let fresh: Repository<BankAccount, _> = Repository::new(store.clone());
    let loaded = fresh.load("7").await?;
    assert_eq!(loaded.state, withdrawn.state);
    assert_eq!((loaded.version, loaded.replayed), (Version::new(3), 3));

    accounts
        .execute("7", AccountCommand::Withdraw { amount: 70 }, context())
        .await?;
    let closed = accounts
        .execute("7", AccountCommand::Close, context())
        .await?;
    assert_eq!(closed.state.status(), Status::Closed);
    let late = fresh
        .execute("7", AccountCommand::Deposit { amount: 1 }, context())
        .await
        .expect_err("closed");
    assert_eq!(late.into_rejection(), Some(AccountError::Closed));
    Ok(())
}
