//! The machine's CPU, shared by the tests that run at once.
//!
//! Most tests do not care how busy the machine is. A few load it (a real
//! `spin up` compiling and serving, twenty thousand requests, the fuzzer,
//! the fault matrix), and one measures how the host writes its answers onto
//! the wire, where a starved host is more likely to flush a head before its
//! body. The loaders share the machine; the measurer takes it alone, so it
//! never runs beside them (tests that take neither run as before).

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static MACHINE: RwLock<()> = RwLock::const_new(());

/// Held for as long as a test needs its share of the machine.
pub enum Share {
    Busy(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// For a test that loads the CPU: others like it run beside it, a test that
/// needs the machine alone waits for it.
pub async fn busy() -> Share {
    Share::Busy(MACHINE.read().await)
}

/// For a test whose measurement a loaded CPU would change: it waits until
/// no loader runs, and none starts until it is done.
pub async fn alone() -> Share {
    Share::Alone(MACHINE.write().await)
}
