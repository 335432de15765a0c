//! Runnable Annals programs (see the `examples/` folder of this crate) and the example domain
//! they share.
//!
//! - [`bank_account`]: the bank account aggregate used by the quickstart, the CLI's demos and
//!   the benchmarks.
pub mod bank_account;

/// The README's Rust examples, compiled and run as doc tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
