//! Exit codes, documented in `capprof --help`.

use std::process::ExitCode;

use capprof::{
    api::{ClientError, FailureKind},
    compose::ComposeError,
    loader::LoadError,
    trace::TraceError,
};

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    Privileges,
    KernelUnsupported,
    /// A client command found no daemon to talk to.
    DaemonNotRunning,
    /// No such container, service or image, or an ambiguous name.
    NotFound,
    /// The daemon's socket is not open to the caller.
    PermissionDenied,
    /// The daemon cannot answer now.
    Unavailable,
    /// The request was malformed (like a usage error).
    BadUsage,
    /// `verify`: the workload failed with the recommended capabilities.
    VerificationFailed,
    /// `verify --leave-one-out`: the workload works without some recommended capabilities.
    NotMinimal,
    /// `compose check`: the files do not match the profiles.
    Mismatch,
    /// A traced command's own exit status.
    Command(u8),
}

impl Exit {
    /// The exit code for an error that reached the edge.
    pub fn for_error(error: &anyhow::Error) -> Self {
        if let Some(client) = error.downcast_ref::<ClientError>() {
            return match client.kind() {
                FailureKind::DaemonNotRunning => Exit::DaemonNotRunning,
                FailureKind::PermissionDenied => Exit::PermissionDenied,
                FailureKind::NotFound => Exit::NotFound,
                FailureKind::BadRequest => Exit::BadUsage,
                FailureKind::KernelUnsupported => Exit::KernelUnsupported,
                FailureKind::Unavailable => Exit::Unavailable,
                FailureKind::Other => Exit::Failure,
            };
        }
        if matches!(
            error.downcast_ref::<ComposeError>(),
            Some(ComposeError::UnknownService { .. })
        ) || error.is::<super::compose::NothingProfiled>()
        {
            return Exit::NotFound;
        }
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
            Exit::BadUsage => ExitCode::from(2),
            Exit::KernelUnsupported => ExitCode::from(4),
            Exit::DaemonNotRunning => ExitCode::from(5),
            Exit::NotFound => ExitCode::from(6),
            Exit::PermissionDenied => ExitCode::from(7),
            Exit::Unavailable => ExitCode::from(8),
            Exit::VerificationFailed => ExitCode::from(9),
            Exit::NotMinimal => ExitCode::from(10),
            Exit::Mismatch => ExitCode::from(11),
            Exit::Command(code) => ExitCode::from(code),
        }
    }
}
