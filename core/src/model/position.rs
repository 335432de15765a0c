use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A place in a store's global log: one total order over every event of the store.
///
/// A position is a pair `(commit, prepare)` compared lexicographically, like EventStoreDB's. The
/// embedded stores number events `1, 2, 3…` in `commit` and leave `prepare` at 0; the PostgreSQL
/// store puts the writing transaction's id in `commit` and the row's sequence number in `prepare`,
/// which is what lets its readers never skip an event that commits late.
///
/// Reads of the global log start *at* a position (inclusive). [`Position::START`] is before every
/// event; to resume after an event, start at [`Position::next`] of its position.
///
/// Positions print as `commit` when `prepare` is 0 and as `commit/prepare` otherwise, and parse
/// back from either form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Position {
    commit: u64,
    prepare: u64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position {
        commit: 0,
        prepare: 0,
    };

    /// The position `(commit, prepare)`.
    pub const fn new(commit: u64, prepare: u64) -> Self {
        Position { commit, prepare }
    }

    /// The position `(n, 0)`, as used by stores that number their events in one sequence.
    pub const fn sequence(n: u64) -> Self {
        Position {
            commit: n,
            prepare: 0,
        }
    }

    /// The first part (a sequence number or a transaction id).
    pub const fn commit(self) -> u64 {
        self.commit
    }

    /// The second part (0, or a sequence number within the commit part).
    pub const fn prepare(self) -> u64 {
        self.prepare
    }

    /// The smallest position after this one: start a read here to resume after an event.
    #[must_use]
    pub const fn next(self) -> Self {
        if self.prepare == u64::MAX {
            Position {
                commit: self.commit.saturating_add(1),
                prepare: 0,
            }
        } else {
            Position {
                commit: self.commit,
                prepare: self.prepare + 1,
            }
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prepare == 0 {
            write!(f, "{}", self.commit)
        } else {
            write!(f, "{}/{}", self.commit, self.prepare)
        }
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({self})")
    }
}

/// The error of parsing a [`Position`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected `N` or `COMMIT/PREPARE` with unsigned integers")]
pub struct ParsePositionError(String);

impl FromStr for Position {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        let (commit, prepare) = match s.split_once('/') {
            Some((c, p)) => (c, p),
            None => (s, "0"),
        };
        Ok(Position {
            commit: commit.trim().parse().map_err(|_| err())?,
            prepare: prepare.trim().parse().map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_round_trips() {
        for p in [Position::START, Position::sequence(42), Position::new(7, 9)] {
            assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }
        assert!("x/1".parse::<Position>().is_err());
        assert!("-1".parse::<Position>().is_err());
    }

    proptest! {
        #[test]
        fn next_is_the_immediate_successor(c in any::<u64>(), p in any::<u64>(), c2 in any::<u64>(), p2 in any::<u64>()) {
            let a = Position::new(c, p);
            let b = Position::new(c2, p2);
            if a != Position::new(u64::MAX, u64::MAX) {
                prop_assert!(a.next() > a);
                // Nothing lies strictly between a position and its successor.
                prop_assert!(!(b > a && b < a.next()));
            }
        }
    }
}
