//! What can go wrong reading, checking or editing Compose files, each with what to do about it.

use std::path::PathBuf;

/// Errors of `compose apply` and `compose check`. None of them leaves a file changed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(
        "{path}:{line}:{column}: the YAML is malformed: {message}. Fix the file (`docker-compose \
         -f {path} config` shows the same problem) and run capprof again; nothing was changed",
        path = path.display()
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "{path}: not a Compose file capprof can read: {message}",
        path = path.display()
    )]
    NotCompose { path: PathBuf, message: String },

    #[error(
        "service `{name}` is not defined in the Compose file(s); services there: {}. Check the \
         service name and the `-f` files",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    UnknownService {
        name: String,
        available: Vec<String>,
    },

    #[error(
        "{path}:{line}: {key} of service `{service}` is invalid: {message}",
        path = path.display()
    )]
    InvalidCapabilities {
        path: PathBuf,
        line: usize,
        service: String,
        key: String,
        message: String,
    },

    #[error(
        "{path}:{line}: capprof cannot edit service `{service}` in place: {message}; nothing was \
         changed",
        path = path.display()
    )]
    UnsupportedForm {
        path: PathBuf,
        line: usize,
        service: String,
        message: String,
    },

    #[error("service `{service}` extends {target}, which cannot be resolved: {message}")]
    Extends {
        service: String,
        target: String,
        message: String,
    },

    #[error(
        "{path}: capprof produced a broken edit ({message}). This is a capprof bug; nothing was \
         changed. Please report it with the Compose file",
        path = path.display()
    )]
    EditFailed { path: PathBuf, message: String },

    #[error(
        "{path} was not read from disk, so capprof cannot tell whether writing it is safe",
        path = path.display()
    )]
    NotReadFromDisk { path: PathBuf },

    #[error(
        "{path} changed on disk since capprof read it; nothing was written. Run the command again \
         on the current file",
        path = path.display()
    )]
    FileChanged { path: PathBuf },

    #[error(
        "{path} is not UTF-8 text; Compose files must be UTF-8",
        path = path.display()
    )]
    NotUtf8 { path: PathBuf },

    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ComposeError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ComposeError::Io {
            action,
            path,
            source,
        }
    }
}
