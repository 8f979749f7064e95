//! `fermyon:spin/variables@2.0.0`: a component sees only the variables its own
//! `[component.<id>.variables]` table declares, with templates resolved from
//! the application variables (defaults, then `SPIN_VARIABLE_*` overrides).

use super::HostState;
use crate::bindings::fermyon::spin2_0_0::variables::{self as v2, Error};

impl v2::Host for HostState {
    async fn get(&mut self, name: String) -> Result<String, Error> {
        super::HostCounters::bump(&self.env.counters.variable_reads);
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
