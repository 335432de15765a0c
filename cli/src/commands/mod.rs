//! One module per command.

pub(crate) mod copy;
pub(crate) mod dlq;
pub(crate) mod export;
pub(crate) mod inspect;
pub(crate) mod migrate;
pub(crate) mod projections;
pub(crate) mod replay;
pub(crate) mod stats;
pub(crate) mod tail;
pub(crate) mod verify;
