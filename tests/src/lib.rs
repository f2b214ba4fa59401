//! The harness behind capprof's integration tests: the CI skip policy, test cgroups, the trigger
//! program that makes known capability checks, and a real Docker engine.

pub mod cgroups;
pub mod ci;
pub mod docker;
pub mod trigger;
