//! The `capprof` binary: a thin command-line shell over the capprof library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
