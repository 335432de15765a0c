//! A typed projection: events decoded with the repository's codecs and upcasters; a payload
//! that cannot be decoded is a poison event with a clear error, not a panic.

use std::time::Duration;

use annals::{
    Aggregate, BoxError, CommandContext, DomainEvent, EventData, EventStore, ExpectedVersion,
    InMemoryStore, RecordedEvent, Repository, StreamId,
};
use annals_projections::{
    MemoryModel, MemoryTx, Projection, ProjectionName, ProjectionRunner, Retry,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountEvent;
    type Event = AccountEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, command: &AccountEvent) -> Result<Vec<AccountEvent>, Self::Error> {
        Ok(vec![command.clone()])
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

/// Balances per account, from the typed events.
struct Balances {
    name: ProjectionName,
    accounts: Repository<Account, InMemoryStore>,
}

impl Projection<MemoryModel<String, u64>> for Balances {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(
        &self,
        tx: &mut MemoryTx<String, u64>,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        for event in events {
            let key = event.stream_id.to_string();
            let balance = tx.get(&key).unwrap_or(0);
            let balance = match self.accounts.decode(event)? {
                AccountEvent::Deposited { amount } => balance + amount,
                AccountEvent::Withdrawn { amount } => balance - amount,
            };
            tx.insert(key, balance);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_projection_matches_on_the_aggregates_events_and_a_bad_payload_is_poison() {
    let store = InMemoryStore::new();
    let accounts: Repository<Account, InMemoryStore> = Repository::new(store.clone());
    for (id, command) in [
        ("1", AccountEvent::Deposited { amount: 100 }),
        ("2", AccountEvent::Deposited { amount: 50 }),
        ("1", AccountEvent::Withdrawn { amount: 30 }),
    ] {
        accounts
            .execute(id, command, CommandContext::new())
            .await
            .unwrap();
    }
    let balances = MemoryModel::new();
    let projection = Balances {
        name: ProjectionName::new("balances").unwrap(),
        accounts: accounts.clone(),
    };
    let running = ProjectionRunner::new(store.clone(), balances.clone(), projection)
        .retry(Retry {
            attempts: 1,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        })
        .start()
        .await
        .unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    running.caught_up_to(head).await.unwrap();
    assert_eq!(balances.get(&"account-1".to_owned()), Some(70));
    assert_eq!(balances.get(&"account-2".to_owned()), Some(50));

    // An event of a known type whose payload is not what the type says.
    let bad = store
        .append(
            &StreamId::new("account-2").unwrap(),
            ExpectedVersion::exact(1),
            vec![EventData::new(
                "Deposited",
                "application/json",
                &b"{ not json"[..],
            )],
        )
        .await
        .unwrap();
    let error = running.caught_up_to(bad.last_position).await.unwrap_err();
    let failure = error.handler_failure().expect("a handler failure");
    assert_eq!(failure.place.version.map(|v| v.get()), Some(2));
    assert_eq!(failure.event_type, "Deposited");
    assert!(error.to_string().contains("codec"), "{error}");
    assert_eq!(
        balances.get(&"account-2".to_owned()),
        Some(50),
        "nothing applied"
    );
    assert!(running.shutdown().await.is_err());
}
