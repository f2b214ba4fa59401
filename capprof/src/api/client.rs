//! The client the CLI uses: connects over the Unix socket (or TCP with TLS), turns failures
//! into messages that say what to do, and answers in library types.

use std::path::PathBuf;

use capprof_proto::v1::{self as pb, capprof_service_client::CapprofServiceClient};
use futures_util::{Stream, StreamExt};
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{
    convert::{self, ConvertError},
    error::REASON_METADATA,
    socket::{DEFAULT_SOCKET, SOCKET_ENV},
    tls_probe::{self, ProbeVerdict},
};
use crate::{profile::Subject, recommend::Recommendation};

/// Where the daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTarget {
    Unix(PathBuf),
    /// `https://host:port`, with the CA that signed the server's certificate and this client's
    /// own certificate and key.
    Tcp {
        url: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        /// The name in the server's certificate, when it differs from the URL's host.
        domain: Option<String>,
    },
}

/// How a client command finds the daemon; flatten into a subcommand's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// The daemon's Unix socket.
    #[arg(long, env = SOCKET_ENV, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Connect over TCP instead (https://HOST:PORT); needs --tls-ca, --tls-cert and --tls-key.
    #[arg(long, env = "CAPPROF_CONNECT", value_name = "URL", requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    pub connect: Option<String>,

    /// The CA that signed the daemon's certificate (PEM), with --connect.
    #[arg(long, env = "CAPPROF_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// This client's certificate (PEM), with --connect.
    #[arg(long, env = "CAPPROF_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// This client's private key (PEM), with --connect.
    #[arg(long, env = "CAPPROF_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// The name in the daemon's certificate, when it is not the host in --connect.
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,
}

impl ConnectArgs {
    pub fn target(&self) -> ClientTarget {
        match (&self.connect, &self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(url), Some(ca), Some(cert), Some(key)) => ClientTarget::Tcp {
                url: url.clone(),
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                domain: self.tls_domain.clone(),
            },
            _ => ClientTarget::Unix(self.socket.clone()),
        }
    }
}

/// What kind of failure, for exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No daemon answers.
    DaemonNotRunning,
    /// The caller may not talk to the daemon.
    PermissionDenied,
    /// No such container/service/image, or more than one.
    NotFound,
    /// The request was malformed.
    BadRequest,
    /// The kernel lacks what capprof needs.
    KernelUnsupported,
    /// The daemon is up but cannot answer now (shutting down, busy, not collecting).
    Unavailable,
    Other,
}

/// Why a call failed, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the capprof daemon is not running (no socket at {}): start it with `sudo capprof daemon`",
        .path.display()
    )]
    NoSocket { path: PathBuf },
    #[error(
        "the capprof daemon is not running (nothing answers on {}, a socket left behind): start it with `sudo capprof daemon`",
        .path.display()
    )]
    Refused { path: PathBuf },
    #[error(
        "permission denied on {}: run with sudo, or join the `capprof` group (`sudo usermod -aG capprof $USER`, then log in again)",
        .path.display()
    )]
    SocketPermission { path: PathBuf },
    #[error("cannot connect to the capprof daemon at {target}: {detail}")]
    Connect { target: String, detail: String },
    /// The TLS handshake failed: a certificate one side does not trust, or none at all.
    #[error(
        "the TLS handshake with the capprof daemon failed ({detail}): the client certificate \
         (--tls-cert, --tls-key) must be signed by the CA the daemon was given as --tls-client-ca, \
         and the daemon's by --tls-ca, for the name in the URL or --tls-domain"
    )]
    TlsRefused { detail: String },
    #[error("cannot read {}: {source}", .path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        code: Code,
        /// The `capprof-error` reason, when the daemon sent one.
        reason: Option<String>,
        message: String,
    },
    #[error(transparent)]
    Protocol(#[from] ConvertError),
}

impl ClientError {
    pub fn kind(&self) -> FailureKind {
        match self {
            ClientError::NoSocket { .. } | ClientError::Refused { .. } => {
                FailureKind::DaemonNotRunning
            }
            ClientError::Connect { .. } => FailureKind::DaemonNotRunning,
            ClientError::SocketPermission { .. } | ClientError::TlsRefused { .. } => {
                FailureKind::PermissionDenied
            }
            ClientError::TlsFile { .. } => FailureKind::BadRequest,
            ClientError::Protocol(_) => FailureKind::Other,
            ClientError::Api { code, reason, .. } => match (code, reason.as_deref()) {
                (Code::NotFound, _) | (Code::InvalidArgument, Some("ambiguous")) => {
                    FailureKind::NotFound
                }
                (Code::InvalidArgument, _) => FailureKind::BadRequest,
                (Code::PermissionDenied | Code::Unauthenticated, _) => {
                    FailureKind::PermissionDenied
                }
                (Code::FailedPrecondition, Some("kernel-unsupported")) => {
                    FailureKind::KernelUnsupported
                }
                (Code::Unavailable, _) => FailureKind::Unavailable,
                _ => FailureKind::Other,
            },
        }
    }
}

/// What the TLS layer said, when it is what failed somewhere in `error`'s chain.
///
/// rustls's error reaches us inside an `io::Error` (whose `source()` skips it): as the error
/// itself during the handshake, or, for an alert the peer sent after it (TLS 1.3 servers check
/// the client's certificate then), only as its text, `received fatal alert: …`.
pub(super) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            let text = inner.to_string();
            if io.kind() == std::io::ErrorKind::InvalidData && text.contains("fatal alert") {
                return Some(text);
            }
        }
        next = error.source();
    }
    None
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        // With TLS 1.3 the server checks the client's certificate after the client thinks the
        // handshake is done, so a refused certificate surfaces on the first call.
        if let Some(detail) = tls_failure(&status) {
            return ClientError::TlsRefused { detail };
        }
        // A transport failure mid-call (the daemon went away) also arrives as a status.
        ClientError::Api {
            code: status.code(),
            reason: status
                .metadata()
                .get(REASON_METADATA)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            message: match status.message() {
                "" => format!("the daemon answered {:?}", status.code()),
                message => message.to_owned(),
            },
        }
    }
}

/// A connected client.
#[derive(Clone, Debug)]
pub struct ApiClient {
    inner: CapprofServiceClient<Channel>,
}

/// A selector from what a person typed.
fn text_selector(query: &str) -> pb::ProfileSelector {
    pb::ProfileSelector {
        selector: Some(pb::profile_selector::Selector::Query(query.to_owned())),
    }
}

impl ApiClient {
    /// Connects, telling a missing daemon, a stale socket and a forbidden socket apart.
    pub async fn connect(target: &ClientTarget) -> Result<Self, ClientError> {
        let channel = match target {
            ClientTarget::Unix(path) => {
                // Probe first: the transport's own error does not keep the errno.
                match tokio::net::UnixStream::connect(path).await {
                    Ok(_) => {}
                    Err(error) => {
                        return Err(match error.kind() {
                            std::io::ErrorKind::NotFound => {
                                ClientError::NoSocket { path: path.clone() }
                            }
                            std::io::ErrorKind::ConnectionRefused => {
                                ClientError::Refused { path: path.clone() }
                            }
                            std::io::ErrorKind::PermissionDenied => {
                                ClientError::SocketPermission { path: path.clone() }
                            }
                            _ => ClientError::Connect {
                                target: path.display().to_string(),
                                detail: error.to_string(),
                            },
                        });
                    }
                }
                let endpoint = Endpoint::from_shared(format!("unix://{}", path.display()))
                    .map_err(|error| ClientError::Connect {
                        target: path.display().to_string(),
                        detail: super::socket::error_chain(&error),
                    })?;
                endpoint
                    .connect()
                    .await
                    .map_err(|error| ClientError::Connect {
                        target: path.display().to_string(),
                        detail: super::socket::error_chain(&error),
                    })?
            }
            ClientTarget::Tcp {
                url,
                ca,
                cert,
                key,
                domain,
            } => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| ClientError::TlsFile {
                        path: path.clone(),
                        source,
                    })
                };
                let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca_pem))
                    .identity(Identity::from_pem(&cert_pem, &key_pem));
                if let Some(domain) = domain {
                    tls = tls.domain_name(domain.clone());
                }
                let connect_error = |error: tonic::transport::Error| match tls_failure(&error) {
                    Some(detail) => ClientError::TlsRefused { detail },
                    None => ClientError::Connect {
                        target: url.clone(),
                        detail: super::socket::error_chain(&error),
                    },
                };
                let channel = Endpoint::from_shared(url.clone())
                    .map_err(connect_error)?
                    .tls_config(tls)
                    .map_err(connect_error)?
                    .connect()
                    .await
                    .map_err(connect_error)?;
                // tonic's handshake ends before a TLS 1.3 daemon has judged our certificate.
                let failed = |detail| ClientError::Connect {
                    target: url.clone(),
                    detail,
                };
                let (address, host) = tls_probe::address_of(url).map_err(failed)?;
                let probe = tls_probe::ProbeTarget {
                    address,
                    server_name: domain.clone().unwrap_or(host),
                    ca_pem: &ca_pem,
                    cert_pem: &cert_pem,
                    key_pem: &key_pem,
                };
                match tls_probe::probe(&probe).await {
                    ProbeVerdict::Accepted => channel,
                    ProbeVerdict::Refused(detail) => {
                        return Err(ClientError::TlsRefused { detail });
                    }
                    ProbeVerdict::Failed(detail) => return Err(failed(detail)),
                }
            }
        };
        Ok(Self {
            inner: CapprofServiceClient::new(channel),
        })
    }

    pub async fn status(&mut self) -> Result<pb::GetStatusResponse, ClientError> {
        Ok(self
            .inner
            .get_status(pb::GetStatusRequest {})
            .await?
            .into_inner())
    }

    pub async fn containers(
        &mut self,
        running_only: bool,
    ) -> Result<Vec<pb::Container>, ClientError> {
        Ok(self
            .inner
            .list_containers(pb::ListContainersRequest { running_only })
            .await?
            .into_inner()
            .containers)
    }

    /// The recommendation for a container, `project/service`, image or `host`.
    pub async fn recommendation(&mut self, query: &str) -> Result<Recommendation, ClientError> {
        self.recommendation_for(text_selector(query)).await
    }

    pub async fn recommendation_for(
        &mut self,
        selector: pb::ProfileSelector,
    ) -> Result<Recommendation, ClientError> {
        let response = self
            .inner
            .get_profile(pb::GetProfileRequest {
                selector: Some(selector),
            })
            .await?
            .into_inner();
        let recommendation = response
            .recommendation
            .ok_or(ConvertError::Missing("recommendation"))?;
        Ok(convert::recommendation_from_proto(recommendation)?)
    }

    /// The recommendation now, then each time it changes. The stream ends with an error when
    /// the daemon stops.
    pub async fn watch(
        &mut self,
        query: &str,
        include_count_updates: bool,
    ) -> Result<impl Stream<Item = Result<Recommendation, ClientError>> + use<>, ClientError> {
        let updates = self
            .inner
            .watch_profile(pb::WatchProfileRequest {
                selector: Some(text_selector(query)),
                include_count_updates,
            })
            .await?
            .into_inner();
        Ok(updates.map(|update| {
            let recommendation = update?
                .recommendation
                .ok_or(ConvertError::Missing("recommendation"))?;
            Ok(convert::recommendation_from_proto(recommendation)?)
        }))
    }

    /// Live checks, of one subject (`query`) or all, of some capabilities or all.
    pub async fn checks(
        &mut self,
        query: Option<&str>,
        capabilities: Vec<String>,
    ) -> Result<
        impl Stream<Item = Result<pb::StreamChecksResponse, ClientError>> + use<>,
        ClientError,
    > {
        let checks = self
            .inner
            .stream_checks(pb::StreamChecksRequest {
                selector: query.map(text_selector),
                capabilities,
            })
            .await?
            .into_inner();
        Ok(checks.map(|check| check.map_err(ClientError::from)))
    }

    /// Forgets a profile; returns whose, and whether there was one.
    pub async fn reset(&mut self, query: &str) -> Result<(Subject, bool), ClientError> {
        let response = self
            .inner
            .reset_profile(pb::ResetProfileRequest {
                selector: Some(text_selector(query)),
            })
            .await?
            .into_inner();
        Ok((
            convert::subject_from_proto(response.subject)?,
            response.existed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, reason: Option<&'static str>) -> ClientError {
        let mut status = Status::new(code, "message");
        if let Some(reason) = reason {
            status.metadata_mut().insert(
                REASON_METADATA,
                tonic::metadata::MetadataValue::from_static(reason),
            );
        }
        ClientError::from(status)
    }

    #[test]
    fn statuses_map_to_failure_kinds() {
        assert_eq!(
            status(Code::NotFound, Some("not-found")).kind(),
            FailureKind::NotFound
        );
        assert_eq!(
            status(Code::InvalidArgument, Some("ambiguous")).kind(),
            FailureKind::NotFound
        );
        assert_eq!(
            status(Code::InvalidArgument, Some("invalid-argument")).kind(),
            FailureKind::BadRequest
        );
        assert_eq!(
            status(Code::FailedPrecondition, Some("kernel-unsupported")).kind(),
            FailureKind::KernelUnsupported
        );
        assert_eq!(
            status(Code::Unavailable, None).kind(),
            FailureKind::Unavailable
        );
        assert_eq!(
            status(Code::PermissionDenied, None).kind(),
            FailureKind::PermissionDenied
        );
        assert_eq!(status(Code::Internal, None).kind(), FailureKind::Other);
    }

    #[test]
    fn a_tls_alert_inside_a_transport_error_is_a_refused_certificate() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let status = Status::from_error(Box::new(io));
        let error = ClientError::from(status);
        assert_eq!(error.kind(), FailureKind::PermissionDenied, "{error:?}");
        assert!(
            error.to_string().contains("UnknownCA")
                && error.to_string().contains("--tls-client-ca"),
            "{error}"
        );
        // After the handshake rustls hands on only the alert's text.
        let late = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let error = ClientError::from(Status::from_error(Box::new(late)));
        assert_eq!(error.kind(), FailureKind::PermissionDenied, "{error:?}");
        let unrelated = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(matches!(
            ClientError::from(unrelated),
            ClientError::Api { .. }
        ));
    }

    #[tokio::test]
    async fn a_missing_socket_says_how_to_start_the_daemon() {
        let path =
            std::env::temp_dir().join(format!("capprof-no-daemon-{}.sock", std::process::id()));
        let error = ApiClient::connect(&ClientTarget::Unix(path.clone()))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), FailureKind::DaemonNotRunning);
        let message = error.to_string();
        assert!(message.contains("sudo capprof daemon"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
