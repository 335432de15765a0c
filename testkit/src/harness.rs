//! A given/when/then harness for aggregates: unit tests of the domain without any store.
//!
//! [`given`] folds past events into the aggregate, [`Given::when`] lets it handle a command,
//! and [`When::then_expect`] / [`When::then_expect_error`] check the decision, panicking with
//! a message that shows what was expected and what happened.
//!
//! [`When::then_expect`] also checks that every emitted event survives the trip through the
//! JSON codec under its event type, as it would through a store.
//!
//! ```
//! use annals::{Aggregate, DomainEvent};
//! use annals_testkit::harness::given;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Default, Serialize, Deserialize)]
//! struct Light { on: bool }
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
//! enum LightEvent { SwitchedOn, SwitchedOff }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! #[error("already on")]
//! struct AlreadyOn;
//!
//! impl Aggregate for Light {
//!     const TYPE: &'static str = "light";
//!     type Command = ();
//!     type Event = LightEvent;
//!     type Error = AlreadyOn;
//!     fn handle(&self, _: &()) -> Result<Vec<LightEvent>, AlreadyOn> {
//!         if self.on { Err(AlreadyOn) } else { Ok(vec![LightEvent::SwitchedOn]) }
//!     }
//!     fn apply(&mut self, event: &LightEvent) {
//!         self.on = matches!(event, LightEvent::SwitchedOn);
//!     }
//! }
//!
//! given::<Light>([]).when(()).then_expect([LightEvent::SwitchedOn]);
//! given::<Light>([LightEvent::SwitchedOn]).when(()).then_expect_error(AlreadyOn);
//! ```

use std::fmt;

use annals::codec::Json;
use annals::{Aggregate, DomainEvent};

/// Starts a scenario: the aggregate after `events`, folded from its initial state.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    let mut history = Vec::new();
    for event in events {
        state.apply(&event);
        history.push(event);
    }
    Given { state, history }
}

/// An aggregate with a past, ready to handle a command.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A,
    history: Vec<A::Event>,
}

impl<A: Aggregate> Given<A> {
    /// The state after the given events.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Lets the aggregate handle `command`.
    pub fn when(self, command: A::Command) -> When<A> {
        let result = self.state.handle(&command);
        When {
            state: self.state,
            history: self.history,
            result,
        }
    }
}

/// The decision of an aggregate on a command, to check.
pub struct When<A: Aggregate> {
    state: A,
    history: Vec<A::Event>,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> fmt::Debug for When<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("When")
            .field("state", &self.state)
            .field("history", &self.history)
            .field("result", &self.result)
            .finish()
    }
}

impl<A: Aggregate> When<A> {
    /// The decision, for checks the other methods do not cover.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    /// Asserts that the command was accepted with exactly `expected`, in order, and returns
    /// the state after applying them.
    ///
    /// # Panics
    ///
    /// When the command was rejected, emitted other events, or an event does not come back
    /// equal from its JSON payload.
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(error) => panic!(
                "expected the events {expected:#?}\nbut the command was rejected: {error} ({error:?})\ngiven: {:#?}",
                self.history
            ),
        };
        assert!(
            events == expected,
            "expected the events {expected:#?}\nbut the command emitted {events:#?}\ngiven: {:#?}",
            self.history
        );
        for event in &events {
            round_trip(event);
        }
        let mut state = self.state;
        for event in &events {
            state.apply(event);
        }
        state
    }

    /// Asserts that the command was accepted and emitted no event.
    ///
    /// # Panics
    ///
    /// When it was rejected or emitted events.
    #[track_caller]
    pub fn then_expect_nothing(self)
    where
        A::Event: PartialEq,
    {
        self.then_expect([]);
    }

    /// Asserts that the command was rejected with `expected`.
    ///
    /// # Panics
    ///
    /// When the command was accepted or rejected with another error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!(
                "expected the rejection {expected:?}\nbut the command emitted {events:#?}\ngiven: {:#?}",
                self.history
            ),
            Err(error) => assert!(
                error == expected,
                "expected the rejection {expected:?}\nbut it was rejected with {error:?}\ngiven: {:#?}",
                self.history
            ),
        }
    }

    /// Asserts that the command was rejected with an error for which `check` holds (for error
    /// types without `PartialEq`), and returns it.
    ///
    /// # Panics
    ///
    /// When the command was accepted or `check` is false.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) -> A::Error {
        match self.result {
            Ok(events) => panic!(
                "expected a rejection but the command emitted {events:#?}\ngiven: {:#?}",
                self.history
            ),
            Err(error) => {
                assert!(
                    check(&error),
                    "the rejection {error:?} does not match\ngiven: {:#?}",
                    self.history
                );
                error
            }
        }
    }
}

#[track_caller]
fn round_trip<E: DomainEvent + PartialEq>(event: &E) {
    let event_type = event.event_type();
    let payload = event
        .encode(&Json)
        .unwrap_or_else(|e| panic!("the event {event:?} cannot be encoded: {e}"));
    let back = E::decode(&Json, event_type, &payload).unwrap_or_else(|e| {
        panic!(
            "the event {event:?} cannot be decoded from its payload {}: {e}",
            String::from_utf8_lossy(&payload)
        )
    });
    assert!(
        back == *event,
        "the event {event:?} comes back from its payload {} as {back:?}",
        String::from_utf8_lossy(&payload)
    );
}
