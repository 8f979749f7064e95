//! `fermyon:spin/variables@2.0.0`: a component sees only the variables its own
//! `[component.<id>.variables]` table declares, with templates resolved from
//! the application variables (defaults, then `SPIN_VARIABLE_*` overrides).

use super::HostState;
use crate::bindings::fermyon::spin2_0_0::variables::{self as v2, Error};

impl v2::Host for HostState {
    async fn get(&mut self, name: String) -> Result<String, Error> {
        super::HostCounters::bump(&self.env.counters.variable_reads);
        if self.env.counters.variable_read_fails() {
            return Err(Error::Provider(format!(
                "the provider failed to read {name}"
            )));
        }
        if crate::manifest::validate_variable_name(&name).is_err() {
            return Err(Error::InvalidName(name));
        }
        self.env
            .variables
            .get(&name)
            .cloned()
            .ok_or(Error::Undefined(name))
    }
}

/// `spin:variables/variables@3.0.0` (Spin 4, async): the same lookup.
mod v3 {
    use wasmtime::component::Accessor;

    use super::super::{HostState, Spin4};
    use crate::bindings::spin4::spin::variables::variables::{self as v3, Error};

    impl v3::Host for HostState {}

    impl v3::HostWithStore for Spin4 {
        async fn get<T: Send>(
            accessor: &Accessor<T, Self>,
            name: String,
        ) -> wasmtime::Result<Result<String, Error>> {
            Ok(accessor.with(|mut access| {
                let state: &mut HostState = access.get();
                super::super::HostCounters::bump(&state.env.counters.variable_reads);
                if state.env.counters.variable_read_fails() {
                    return Err(Error::Provider(format!(
                        "the provider failed to read {name}"
                    )));
                }
                if crate::manifest::validate_variable_name(&name).is_err() {
                    return Err(Error::InvalidName(name));
                }
                state
                    .env
                    .variables
                    .get(&name)
                    .cloned()
                    .ok_or(Error::Undefined(name))
            }))
        }
    }
}
