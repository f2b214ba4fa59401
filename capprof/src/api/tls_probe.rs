//! Whether the daemon accepts this client's certificate, asked on a TLS connection of its own.
//!
//! With TLS 1.3 the server checks the client's certificate only after the client's side of the
//! handshake is done, so tonic's `connect()` succeeds even for a certificate the daemon refuses.
//! The refusal then arrives as an alert while the client's first request is already on its way,
//! and hyper may report that request as canceled or as a bare "transport error", the alert lost
//! (10 of 40 runs of the TLS test here). A probe that sends nothing after the handshake and
//! reads the daemon's first record gets the verdict every time: the alert, or the HTTP/2
//! SETTINGS frame a server sends first (0 failures in 100 runs).

use std::{sync::Arc, time::Duration};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_rustls::TlsConnector;

use super::client::tls_failure;

/// How long the daemon has to send its first record after the handshake. It sends it at once;
/// a daemon slower than this is not refusing, so the probe lets the real call go ahead.
const FIRST_RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the probe found out.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ProbeVerdict {
    /// The daemon spoke after the handshake (or took too long to say no).
    Accepted,
    /// The TLS layer failed; the text names the alert or the certificate problem.
    Refused(String),
    /// Something other than TLS failed (the address, the connection, a file).
    Failed(String),
}

/// The files and names of a TCP target.
#[derive(Debug)]
pub(super) struct ProbeTarget<'a> {
    /// `host:port`.
    pub address: String,
    /// The name the daemon's certificate must carry.
    pub server_name: String,
    pub ca_pem: &'a [u8],
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

/// `host:port` and the host of an `https://host[:port]` URL (port 443 when it has none).
pub(super) fn address_of(url: &str) -> Result<(String, String), String> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|error| format!("{url} is not a URL: {error}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((address, host))
}

/// Connects, completes the handshake, sends nothing and reads the daemon's first record.
pub(super) async fn probe(target: &ProbeTarget<'_>) -> ProbeVerdict {
    let config = match client_config(target) {
        Ok(config) => config,
        Err(detail) => return ProbeVerdict::Failed(detail),
    };
    let server_name = match ServerName::try_from(target.server_name.clone()) {
        Ok(name) => name,
        Err(error) => {
            return ProbeVerdict::Failed(format!(
                "{} is not a server name: {error}",
                target.server_name
            ));
        }
    };
    let tcp = match TcpStream::connect(&target.address).await {
        Ok(tcp) => tcp,
        Err(error) => return ProbeVerdict::Failed(format!("{}: {error}", target.address)),
    };
    let mut tls = match TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(error) => return verdict_of(&error),
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_RECORD_TIMEOUT, tls.read(&mut first)).await {
        Err(_elapsed) => ProbeVerdict::Accepted,
        Ok(Ok(1..)) => ProbeVerdict::Accepted,
        Ok(Ok(0)) => ProbeVerdict::Failed(
            "the daemon closed the connection right after the TLS handshake".to_owned(),
        ),
        Ok(Err(error)) => verdict_of(&error),
    }
}

/// The verdict an I/O error from tokio-rustls carries.
fn verdict_of(error: &std::io::Error) -> ProbeVerdict {
    match tls_failure(error) {
        Some(detail) => ProbeVerdict::Refused(detail),
        None => ProbeVerdict::Failed(error.to_string()),
    }
}

/// The same trust and identity tonic's channel uses, with HTTP/2 offered as tonic does.
fn client_config(target: &ProbeTarget<'_>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(target.ca_pem) {
        let certificate = certificate.map_err(|error| format!("the CA file: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("the CA file: {error}"))?;
    }
    let chain = CertificateDer::pem_slice_iter(target.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the client certificate: {error}"))?;
    let key = PrivateKeyDer::from_pem_slice(target.key_pem)
        .map_err(|error| format!("the client key: {error}"))?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|error| format!("the client certificate and key: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_url_with_443_by_default() {
        assert_eq!(
            address_of("https://daemon.example:7443").unwrap(),
            (
                "daemon.example:7443".to_owned(),
                "daemon.example".to_owned()
            )
        );
        assert_eq!(
            address_of("https://daemon.example").unwrap(),
            ("daemon.example:443".to_owned(), "daemon.example".to_owned())
        );
        assert_eq!(
            address_of("https://[::1]:7443").unwrap(),
            ("[::1]:7443".to_owned(), "::1".to_owned())
        );
        assert!(address_of("https://").is_err());
    }

    #[test]
    fn an_alert_after_the_handshake_is_a_refusal_and_a_reset_is_not() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        assert_eq!(
            verdict_of(&alert),
            ProbeVerdict::Refused("received fatal alert: UnknownCA".to_owned())
        );
        let rustls_error = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        );
        assert!(matches!(
            verdict_of(&rustls_error),
            ProbeVerdict::Refused(text) if text.contains("BadCertificate")
        ));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(verdict_of(&reset), ProbeVerdict::Failed(_)));
    }
}
