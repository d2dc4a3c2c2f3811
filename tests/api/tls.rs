//! gRPC over TLS with client certificates: a client with a certificate
//! from the configured CA is served, one without is refused at the
//! handshake, plaintext is refused, and the real grpcurl speaks to it.

use segd::proto as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    with_identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(fixture("tls-ca.pem")))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(
            fixture("tls-client.pem"),
            fixture("tls-client.key"),
        ));
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_with_client_certificates_serves_only_certified_clients() {
    let app = TestApp::with()
        .tls(segd::server::Tls {
            cert: fixture("tls-server.pem"),
            key: fixture("tls-server.key"),
            client_ca: Some(fixture("tls-ca.pem")),
        })
        .spawn()
        .await;
    let call = async |channel: Channel| {
        pb::query_service_client::QueryServiceClient::new(channel)
            .get_metrics_settings(req("tls", pb::GetMetricsSettingsRequest {}))
            .await
    };
    let certified = tls_channel(app.addr, true).await.unwrap();
    call(certified).await.unwrap();
    // No client certificate: the handshake (or the first call) fails.
    let refused = match tls_channel(app.addr, false).await {
        Err(_) => true,
        Ok(ch) => call(ch).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // Plaintext HTTP/2 to the TLS port is not served.
    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => call(ch).await.is_err(),
    };
    assert!(refused, "plaintext was served");
    // The real grpcurl, with the CA and a client certificate.
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(grpcurl())
        .args([
            "-cacert",
            &format!("{dir}/tls-ca.pem"),
            "-cert",
            &format!("{dir}/tls-client.pem"),
            "-key",
            &format!("{dir}/tls-client.key"),
            &format!("localhost:{}", app.addr.port()),
            "list",
        ])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("segd.v1.QueryService"),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
