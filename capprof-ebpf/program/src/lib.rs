//! Empty on purpose: the library target lets `capprof` name this package as a build dependency, so
//! cargo rebuilds the eBPF object when the program changes. The program is `src/main.rs`.
#![no_std]
