//! The `capprof.v1` gRPC API. Filled in by the API issue.
