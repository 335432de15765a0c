//! Runnable Annals programs (see the `examples/` folder of this crate) and the example domain
//! they share.
//!
//! - [`bank_account`]: the bank account aggregate used by the quickstart, the CLI's demos and
//!   the benchmarks.
//! - [`balances`]: the projection of the accounts' balances into a sled read model, run by the
//!   quickstart and registered with the `annals-bank` CLI.
pub mod balances;
pub mod bank_account;

/// The README's Rust examples, compiled and run as doc tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
