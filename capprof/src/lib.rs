//! capprof: which Linux capabilities does this container really need?
//!
//! The library holds everything; the `capprof` binary's CLI, its daemon and the tests are thin
//! shells over it.

pub mod api;
pub mod attach;
pub mod attribution;
pub mod baseline;
pub mod bpffs;
pub mod btf;
pub mod capability;
pub mod cgroup;
pub mod checks;
pub mod classify;
pub mod collector;
pub mod compose;
pub mod compose_files;
pub mod daemon;
pub mod docker;
pub mod fold;
pub mod kallsyms;
pub mod kernel_layout;
pub mod loader;
pub mod privileges;
pub mod profile;
pub mod profile_output;
pub mod profile_run;
pub mod profiler;
pub mod recommend;
pub mod report_output;
pub mod service;
pub mod service_profiles;
pub mod store;
pub mod trace;
pub mod trace_output;
pub mod verify;

#[cfg(test)]
pub(crate) mod test_support;
