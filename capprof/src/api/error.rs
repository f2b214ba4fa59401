//! Every way an API call can fail, each with its own gRPC status code.
//!
//! Besides the code, every status carries a `capprof-error` metadata entry naming the reason
//! (`not-found`, `ambiguous`, ...), so a client can tell apart failures that share a code
//! (an ambiguous name and a malformed one are both `INVALID_ARGUMENT`) without parsing messages.

use tonic::{Code, Status, metadata::MetadataValue};

use crate::store::StoreError;

/// The metadata key holding [`ApiError::reason`].
pub const REASON_METADATA: &str = "capprof-error";

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing is called that. `suggestions` are close names that do exist.
    #[error("{}", not_found_message(.query, .suggestions))]
    NotFound {
        query: String,
        suggestions: Vec<String>,
    },
    /// More than one thing is called that.
    #[error(
        "`{query}` matches more than one {kind}: {}; name one exactly (see `capprof ps`)",
        .candidates.join(", ")
    )]
    Ambiguous {
        query: String,
        kind: &'static str,
        candidates: Vec<String>,
    },
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The kernel offers no hook on `cap_capable`; only stored profiles can be served.
    #[error(
        "the kernel offers no way to trace capability checks ({reason}); stored profiles can still be read, but nothing new is recorded"
    )]
    KernelUnsupported { reason: String },
    /// The collector stopped; only stored profiles can be served.
    #[error("the daemon is not collecting checks ({reason}); see its log, or restart it")]
    TracerStopped { reason: String },
    #[error("the daemon is shutting down; start it again with `sudo capprof daemon`")]
    ShuttingDown,
    #[error("the profile database is busy ({0}); try again")]
    StoreBusy(String),
    #[error(
        "the profile database was written by a newer capprof: {0}; upgrade capprof or give the daemon another --state-dir"
    )]
    StoreTooNew(String),
    #[error("the profile database is damaged: {0}")]
    StoreCorrupt(String),
    #[error("the profile database failed: {0}")]
    StoreFailed(String),
    /// A blocking task of the server panicked or was cancelled.
    #[error("the daemon failed while answering: {0}")]
    TaskFailed(String),
}

fn not_found_message(query: &str, suggestions: &[String]) -> String {
    let mut message =
        format!("no container, Compose service or image is called `{query}` that capprof knows");
    if suggestions.is_empty() {
        message.push_str("; `capprof ps` lists the containers it knows");
    } else {
        message.push_str(&format!(
            "; did you mean {}? (`capprof ps` lists them all)",
            suggestions.join(", ")
        ));
    }
    message
}

impl ApiError {
    /// The gRPC code: each reason has exactly one.
    pub fn code(&self) -> Code {
        match self {
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::Ambiguous { .. } | ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::KernelUnsupported { .. } | ApiError::StoreTooNew(_) => {
                Code::FailedPrecondition
            }
            ApiError::TracerStopped { .. } | ApiError::ShuttingDown | ApiError::StoreBusy(_) => {
                Code::Unavailable
            }
            ApiError::StoreCorrupt(_) => Code::DataLoss,
            ApiError::StoreFailed(_) | ApiError::TaskFailed(_) => Code::Internal,
        }
    }

    /// The machine-readable reason sent as `capprof-error` metadata.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "not-found",
            ApiError::Ambiguous { .. } => "ambiguous",
            ApiError::InvalidArgument(_) => "invalid-argument",
            ApiError::KernelUnsupported { .. } => "kernel-unsupported",
            ApiError::TracerStopped { .. } => "tracer-stopped",
            ApiError::ShuttingDown => "shutting-down",
            ApiError::StoreBusy(_) => "store-busy",
            ApiError::StoreTooNew(_) => "store-too-new",
            ApiError::StoreCorrupt(_) => "store-corrupt",
            ApiError::StoreFailed(_) => "store-failed",
            ApiError::TaskFailed(_) => "task-failed",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Database {
                source: rusqlite::Error::SqliteFailure(failure, _),
                ..
            } if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
            {
                ApiError::StoreBusy(error.to_string())
            }
            StoreError::NewerSchema { .. } => ApiError::StoreTooNew(error.to_string()),
            StoreError::Corrupt(_) => ApiError::StoreCorrupt(error.to_string()),
            StoreError::Database { .. } | StoreError::StateDir { .. } => {
                ApiError::StoreFailed(error.to_string())
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let mut status = Status::new(error.code(), error.to_string());
        status
            .metadata_mut()
            .insert(REASON_METADATA, MetadataValue::from_static(error.reason()));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_code_and_metadata() {
        let cases = [
            (
                ApiError::NotFound {
                    query: "webb".into(),
                    suggestions: vec!["web".into()],
                },
                Code::NotFound,
                "not-found",
            ),
            (
                ApiError::Ambiguous {
                    query: "3f2a".into(),
                    kind: "container id",
                    candidates: vec!["3f2a11".into(), "3f2a22".into()],
                },
                Code::InvalidArgument,
                "ambiguous",
            ),
            (
                ApiError::KernelUnsupported {
                    reason: "no kprobes".into(),
                },
                Code::FailedPrecondition,
                "kernel-unsupported",
            ),
            (ApiError::ShuttingDown, Code::Unavailable, "shutting-down"),
            (
                ApiError::StoreCorrupt("x".into()),
                Code::DataLoss,
                "store-corrupt",
            ),
        ];
        for (error, code, reason) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
            assert_eq!(
                status.metadata().get(REASON_METADATA).unwrap(),
                reason,
                "{message}"
            );
        }
    }

    #[test]
    fn not_found_lists_suggestions_or_says_where_to_look() {
        let with = ApiError::NotFound {
            query: "webb".into(),
            suggestions: vec!["web (service shop/web)".into()],
        };
        assert!(
            with.to_string()
                .contains("did you mean web (service shop/web)?"),
            "{with}"
        );
        let without = ApiError::NotFound {
            query: "zzz".into(),
            suggestions: vec![],
        };
        assert!(without.to_string().contains("capprof ps"), "{without}");
    }

    #[test]
    fn busy_database_is_retryable_and_corruption_is_data_loss() {
        let busy = StoreError::Database {
            path: ":memory:".into(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        };
        assert_eq!(ApiError::from(busy).code(), Code::Unavailable);
        assert_eq!(
            ApiError::from(StoreError::Corrupt("subject".into())).code(),
            Code::DataLoss
        );
        assert_eq!(
            ApiError::from(StoreError::NewerSchema {
                path: "x".into(),
                found: 9
            })
            .code(),
            Code::FailedPrecondition
        );
    }
}
