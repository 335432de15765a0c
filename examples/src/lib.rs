//! Runnable Annals programs; see the `examples/` folder of this crate.
#![forbid(unsafe_code)]
