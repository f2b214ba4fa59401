//! The harness behind capprof's integration tests: CI policy, test cgroups, the trigger
//! program that makes known capability checks, and an API server over a real store.

pub mod api;
pub mod cgroups;
pub mod ci;
pub mod trigger;
