//! The harness behind capprof's integration tests: CI policy, test cgroups, and the trigger
//! program that makes known capability checks.

pub mod cgroups;
pub mod ci;
pub mod trigger;
