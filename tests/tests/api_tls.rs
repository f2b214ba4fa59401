//! The API over TCP: TLS with client-certificate authentication, certificates made by the
//! `openssl` tool for each run.

use std::{path::Path, process::Command};

use capprof::api::{ApiClient, ClientError, ClientTarget, FailureKind, socket::TlsFiles};
use capprof_proto::v1 as pb;
use capprof_tests::{
    api::{TestDaemon, on_path},
    ci,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate signed by it with `extensions` (`<name>.pem`, `<name>.key`).
fn certificate_authority(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
}

fn signed(dir: &Path, ca: &str, name: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_a_client_certificate_from_the_configured_ca() {
    if on_path("openssl").is_none() {
        ci::skip_or_fail("the openssl tool is not installed (apt-get install openssl)");
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    certificate_authority(dir, "capprof-ca");
    certificate_authority(dir, "rogue-ca");
    signed(
        dir,
        "capprof-ca",
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(dir, "capprof-ca", "client", "extendedKeyUsage=clientAuth\n");
    signed(dir, "rogue-ca", "rogue", "extendedKeyUsage=clientAuth\n");

    let daemon = TestDaemon::start_with_tcp(Some(TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: dir.join("capprof-ca.pem"),
    }))
    .await;
    let addr = daemon.tcp_addr.expect("TCP is served");
    let url = format!("https://127.0.0.1:{}", addr.port());
    let target = |client: &str| ClientTarget::Tcp {
        url: url.clone(),
        ca: dir.join("capprof-ca.pem"),
        cert: dir.join(format!("{client}.pem")),
        key: dir.join(format!("{client}.key")),
        domain: Some("localhost".into()),
    };

    let mut trusted = ApiClient::connect(&target("client"))
        .await
        .expect("TLS with a client certificate");
    assert_eq!(
        trusted
            .recommendation("shop/web")
            .await
            .unwrap()
            .cap_add_names(),
        ["CHOWN", "NET_BIND_SERVICE"]
    );

    // A certificate from another CA: with TLS 1.3 the daemon refuses it after the handshake,
    // and connect() must still say so, every time (the first call alone would race the alert).
    let rogue = async {
        let mut client = ApiClient::connect(&target("rogue")).await?;
        client.status().await
    };
    let refused = rogue
        .await
        .expect_err("a client certificate from another CA is refused");
    assert!(
        matches!(&refused, ClientError::TlsRefused { detail } if detail.contains("alert"))
            && refused.kind() == FailureKind::PermissionDenied,
        "a refused certificate is a TLS refusal naming the daemon's alert (exit 7): {refused:?}"
    );

    // No client certificate at all.
    let ca = Certificate::from_pem(std::fs::read(dir.join("capprof-ca.pem")).unwrap());
    let anonymous = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .unwrap();
    assert!(
        raw_status(anonymous).await.is_err(),
        "a client without a certificate is refused"
    );

    // Plain HTTP/2 to the TLS port.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port())).unwrap();
    assert!(raw_status(plain).await.is_err(), "plaintext is refused");

    drop(trusted);
    daemon.stop().await.expect("clean shutdown");
}

/// GetStatus through a channel built by hand, for clients `ApiClient` would not build.
async fn raw_status(endpoint: Endpoint) -> Result<(), Box<dyn std::error::Error>> {
    let channel = endpoint.connect().await?;
    let mut client = pb::capprof_service_client::CapprofServiceClient::new(channel);
    client.get_status(pb::GetStatusRequest {}).await?;
    Ok(())
}
