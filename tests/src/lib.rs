//! capprof's integration test harness: the CI skip policy and a real Docker engine.

pub mod ci;
pub mod docker;
