//! The in-memory store and the in-process bus.

mod bus;
mod store;

pub use bus::{InMemoryBus, DEFAULT_BUS_CAPACITY};
pub use store::InMemoryStore;
