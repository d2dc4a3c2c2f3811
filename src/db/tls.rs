//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls (ring).
//!
//! | sslmode       | encrypted          | server certificate checked            |
//! |---------------|--------------------|---------------------------------------|
//! | `disable`     | never              | -                                     |
//! | `prefer`      | if the server can  | chain, when a CA is given             |
//! | `require`     | always             | chain, when a CA is given             |
//! | `verify-ca`   | always             | chain (a CA is required)              |
//! | `verify-full` | always             | chain and host name (a CA is required)|
//!
//! As in libpq, giving a CA file makes `prefer` and `require` check the
//! chain too. Every connection segd makes (pool, migrations, the feed
//! listener, stream sessions) and every cancel request uses the one
//! [`Tls`] built here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP (segd's default when the URL names no `sslmode`).
    #[default]
    Disable,
    /// TLS if the server offers it, else plain.
    Prefer,
    /// TLS; the certificate is checked only when a CA is given.
    Require,
    /// TLS with the chain checked against the CA.
    VerifyCa,
    /// TLS with the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Parses a libpq `sslmode` value.
    ///
    /// # Errors
    /// `InvalidArgument` on `database_url` for anything else (`allow` too:
    /// segd never starts plain and upgrades).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(Error::invalid(
                    "database_url",
                    format!(
                        "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                    ),
                ));
            }
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres should do: it knows only disable, prefer and
    /// require; checking the certificate is the connector's business.
    pub fn to_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            Self::Disable => T::Disable,
            Self::Prefer => T::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => T::Require,
        }
    }
}

/// The TLS side of PostgreSQL connections: the mode and a rustls connector
/// checking what the mode asks for.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    ca: Option<PathBuf>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("ca", &self.ca)
            .finish()
    }
}

impl Default for Tls {
    fn default() -> Self {
        Self::plain()
    }
}

impl Tls {
    /// No TLS, as segd always did.
    pub fn plain() -> Self {
        // Never used (tokio-postgres does not ask for TLS with sslmode
        // disable), but tokio-postgres wants a connector; this one trusts
        // nothing.
        let config = builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        Self {
            mode: SslMode::Disable,
            ca: None,
            config: Arc::new(config),
        }
    }

    /// TLS in `mode`, checking the server against the PEM CA certificates in
    /// `ca` (a file) when given.
    ///
    /// # Errors
    /// `InvalidArgument`: `verify-ca` or `verify-full` without a CA, or a
    /// CA file that cannot be read or holds no certificate.
    pub fn new(mode: SslMode, ca: Option<&Path>) -> Result<Self> {
        if mode == SslMode::Disable {
            return Ok(Self::plain());
        }
        let roots = ca.map(read_roots).transpose()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(Error::invalid(
                    "database_ca",
                    format!(
                        "sslmode={} needs the CA that signed the server's certificate: \
                         sslrootcert in DATABASE_URL, or --database-ca (SEGD_DATABASE_CA)",
                        mode.as_str()
                    ),
                ));
            }
            (_, None) => Arc::new(AnyCertificate(provider().signature_verification_algorithms)),
            (SslMode::VerifyFull, Some(roots)) => web_pki(roots)?,
            (_, Some(roots)) => Arc::new(ChainOnly(web_pki(roots)?)),
        };
        let config = builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            mode,
            ca: ca.map(Path::to_path_buf),
            config: Arc::new(config),
        })
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The CA file the server is checked against, if any.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The connector tokio-postgres (and deadpool) connect with.
    pub fn make(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new((*self.config).clone())
    }

    /// On a fresh socket to the server, asks for TLS the way tokio-postgres
    /// does (an SSLRequest) and performs the handshake for `host`, so that
    /// segd can own the decrypted stream (see `db::stream_conn`). With
    /// `disable`, and with `prefer` when the server declines, the socket is
    /// returned as is.
    ///
    /// # Errors
    /// `Unavailable`: the server declines TLS that the mode requires, the
    /// handshake fails (a certificate that does not check out) or the
    /// connection is lost.
    pub async fn negotiate<S>(&self, mut sock: S, host: &str) -> Result<Negotiated<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.mode == SslMode::Disable {
            return Ok(Negotiated::Plain(sock));
        }
        let io = |e: std::io::Error| Error::Unavailable(format!("asking PostgreSQL for TLS: {e}"));
        let mut request = bytes::BytesMut::new();
        postgres_protocol::message::frontend::ssl_request(&mut request);
        sock.write_all(&request).await.map_err(io)?;
        sock.flush().await.map_err(io)?;
        let answer = sock.read_u8().await.map_err(io)?;
        match answer {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(Negotiated::Plain(sock)),
            b'N' => {
                return Err(Error::Unavailable(format!(
                    "the server does not support TLS (sslmode={})",
                    self.mode.as_str()
                )));
            }
            other => {
                return Err(Error::Unavailable(format!(
                    "unexpected answer {other:#04x} to an SSLRequest"
                )));
            }
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| Error::Unavailable(format!("TLS to `{host}`: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, sock)
            .await
            .map_err(|e| Error::Unavailable(format!("TLS handshake with PostgreSQL: {e}")))?;
        Ok(Negotiated::Tls(Box::new(stream)))
    }
}

/// A socket after [`Tls::negotiate`].
pub enum Negotiated<S> {
    /// No TLS.
    Plain(S),
    /// The TLS stream over it.
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
}

fn read_roots(path: &Path) -> Result<RootCertStore> {
    let bad = |what: String| Error::invalid("database_ca", format!("{}: {what}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(roots)
}

fn web_pki(roots: RootCertStore) -> Result<Arc<dyn ServerCertVerifier>> {
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
        .build()
        .map_err(|e| Error::invalid("database_ca", e.to_string()))?;
    Ok(v)
}

/// `require` without a CA: any certificate (the handshake's signatures are
/// still checked, so the session is bound to the certificate's key).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last, so a name error
        // means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(m.as_str()).unwrap(), m);
        }
        assert!(SslMode::parse("allow").is_err());
        assert!(SslMode::parse("verify_full").is_err());
    }

    #[test]
    fn verifying_modes_need_a_ca() {
        assert!(Tls::new(SslMode::Require, None).is_ok());
        for m in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = Tls::new(m, None).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        }
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        assert!(Tls::new(SslMode::VerifyFull, Some(&fixtures.join("pg-ca.pem"))).is_ok());
        // A private key is no CA certificate.
        assert!(Tls::new(SslMode::VerifyFull, Some(&fixtures.join("pg-server.key"))).is_err());
        assert!(Tls::new(SslMode::VerifyFull, Some(&fixtures.join("missing.pem"))).is_err());
    }
}
