//! Exit codes, documented in `capprof --help`.

use std::process::ExitCode;

use capprof::{loader::LoadError, trace::TraceError};

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    Privileges,
    KernelUnsupported,
    /// A traced command's own exit status.
    Command(u8),
}

impl Exit {
    /// The exit code for an error that reached the edge.
    pub fn for_error(error: &anyhow::Error) -> Self {
        let load = error.downcast_ref::<LoadError>().or_else(|| {
            match error.downcast_ref::<TraceError>() {
                Some(TraceError::Load(load)) => Some(load),
                _ => None,
            }
        });
        match load {
            Some(LoadError::MissingPrivileges { .. }) => Exit::Privileges,
            Some(LoadError::NoAttachPath { .. } | LoadError::Btf(_)) => Exit::KernelUnsupported,
            _ => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Success => ExitCode::SUCCESS,
            Exit::Failure => ExitCode::from(1),
            Exit::Privileges => ExitCode::from(3),
            Exit::KernelUnsupported => ExitCode::from(4),
            Exit::Command(code) => ExitCode::from(code),
        }
    }
}
