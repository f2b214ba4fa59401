//! The harness behind capprof's integration tests: the CI skip policy, test cgroups, the trigger
//! program that makes known capability checks, a real Docker engine, an API server over a real
//! store, and the workload corpus.

pub mod api;
pub mod cgroups;
pub mod ci;
pub mod daemon;
pub mod docker;
pub mod trigger;
pub mod workloads;
