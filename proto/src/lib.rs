//! capprof's gRPC API, package `capprof.v1` (`proto/capprof/v1/capprof.proto`).
//!
//! The code is generated at build time from the `.proto` files with protox and
//! tonic-prost-build; no `protoc` is needed. `docs/api.md` describes the services.

/// Version 1 of the API. Breaking changes go to a new module, never into this one.
pub mod v1 {
    #![allow(clippy::all, missing_debug_implementations)]
    tonic::include_proto!("capprof.v1");
}
