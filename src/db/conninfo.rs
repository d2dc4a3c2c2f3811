//! A parsed `DATABASE_URL`: tokio-postgres' settings plus the TLS that the
//! URL's `sslmode` and `sslrootcert` ask for.
//!
//! tokio-postgres parses both URL (`postgres://…?sslmode=require`) and
//! key/value (`host=… sslmode=require`) strings, but knows only the
//! `disable`, `prefer` and `require` modes and no `sslrootcert`; those two
//! parameters are taken out here first and handed to [`Tls`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{SslMode, Tls};
use crate::error::{Error, Result};

/// Where PostgreSQL is and how to reach it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// tokio-postgres' settings (its `ssl_mode` follows the TLS mode).
    pub config: tokio_postgres::Config,
    /// The TLS connector every connection and cancel request uses.
    pub tls: Tls,
}

/// A connection's socket, plain or TLS, as tokio-postgres drives it.
pub type PgStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl ConnInfo {
    /// Parses `url`. `ca` (`--database-ca`), when given, overrides the
    /// URL's `sslrootcert`. Without `sslmode`, connections are plain.
    ///
    /// # Errors
    /// `InvalidArgument`: the URL does not parse, its `sslmode` is unknown,
    /// or the CA cannot be used (see [`Tls::new`]).
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Self> {
        let (rest, ssl) = take_ssl_params(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| Error::invalid("database_url", format!("{e}")))?;
        let mode = ssl.mode.as_deref().map(SslMode::parse).transpose()?;
        let mode = mode.unwrap_or_default();
        let ca = ca.map(Path::to_path_buf).or(ssl.rootcert);
        if ca.as_deref() == Some(Path::new("system")) {
            return Err(Error::invalid(
                "database_ca",
                "sslrootcert=system is not supported; name a CA file",
            ));
        }
        if config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require {
            // Stream sessions run tokio-postgres over a TLS stream segd
            // owns, where it cannot bind SCRAM to the channel: they would
            // fail at the first stream rather than at start-up.
            return Err(Error::invalid(
                "database_url",
                "channel_binding=require is not supported (member streams' sessions cannot bind); use prefer",
            ));
        }
        let tls = Tls::new(mode, ca.as_deref())?;
        config.ssl_mode(mode.to_tokio_postgres());
        Ok(Self { config, tls })
    }

    /// The same server with segd's session settings: UTC, the default
    /// statement timeout, quiet notices, and `segd` as the application name.
    #[must_use]
    pub fn session(&self, statement_timeout: Duration) -> Self {
        let mut cfg = self.config.clone();
        let options = format!(
            "{} -c statement_timeout={} -c TimeZone=UTC -c idle_in_transaction_session_timeout=300000 -c client_min_messages=warning",
            cfg.get_options().unwrap_or_default(),
            statement_timeout.as_millis()
        );
        cfg.options(options.trim());
        if cfg.get_application_name().is_none() {
            cfg.application_name("segd");
        }
        Self {
            config: cfg,
            tls: self.tls.clone(),
        }
    }

    /// The settings for connections through a transaction pooler: no
    /// session settings (PgBouncer refuses the `options` startup parameter,
    /// and a session's settings would reach other clients), only the
    /// application name.
    #[must_use]
    pub fn pooled(&self) -> Self {
        let mut c = self.clone();
        if c.config.get_application_name().is_none() {
            c.config.application_name("segd");
        }
        c
    }

    /// The same server, database `name`.
    #[must_use]
    pub fn with_dbname(&self, name: &str) -> Self {
        let mut c = self.clone();
        c.config.dbname(name);
        c
    }

    /// Opens a connection; the caller drives the returned connection.
    ///
    /// # Errors
    /// The server is unreachable, refuses, or its TLS does not check out.
    pub async fn connect(
        &self,
    ) -> std::result::Result<(Client, Connection<Socket, PgStream>), tokio_postgres::Error> {
        self.config.connect(self.tls.make()).await
    }
}

/// The TLS parameters taken out of a connection string.
#[derive(Debug, Default, PartialEq)]
struct SslParams {
    mode: Option<String>,
    rootcert: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off a URL or key/value string.
fn take_ssl_params(url: &str) -> Result<(String, SslParams)> {
    let mut ssl = SslParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            ssl.mode = Some(value);
            true
        }
        "sslrootcert" => {
            ssl.rootcert = Some(PathBuf::from(value));
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), ssl));
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                !take(&percent_decode(k), percent_decode(v))
            })
            .collect();
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (raw, key, value) in key_values(url)? {
            if !take(&key, value) {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    Ok((rest, ssl))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of a libpq key/value string: each pair's raw text,
/// its key and its unquoted value.
fn key_values(s: &str) -> Result<Vec<(&str, String, String)>> {
    let bad = || Error::invalid("database_url", "not a URL or key=value connection string");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(bad());
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = Vec::new();
        loop {
            match b.get(i) {
                None if quoted => return Err(bad()),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    value.push(*b.get(i + 1).ok_or_else(bad)?);
                    i += 2;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(value).map_err(|_| bad())?;
        out.push((&s[start..i], key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, p) = take_ssl_params(url).unwrap();
        (
            rest,
            p.mode,
            p.rootcert.map(|p| p.to_string_lossy().into_owned()),
        )
    }

    #[test]
    fn ssl_parameters_leave_urls() {
        assert_eq!(
            split(
                "postgres://u:pw@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca%20x.pem"
            ),
            (
                "postgres://u:pw@db:5432/x?application_name=a".into(),
                Some("verify-full".into()),
                Some("/etc/ca x.pem".into())
            )
        );
        assert_eq!(
            split("postgresql://db/x?sslmode=require"),
            ("postgresql://db/x".into(), Some("require".into()), None)
        );
        assert_eq!(
            split("postgres://db/x"),
            ("postgres://db/x".into(), None, None)
        );
    }

    #[test]
    fn ssl_parameters_leave_key_value_strings() {
        assert_eq!(
            split("host=db sslmode = 'verify-ca'  user=u password='a b\\'c' sslrootcert=/ca.pem"),
            (
                "host=db user=u password='a b\\'c'".into(),
                Some("verify-ca".into()),
                Some("/ca.pem".into())
            )
        );
        assert!(take_ssl_params("host=db user").is_err());
        assert!(take_ssl_params("host='db").is_err());
    }

    #[test]
    fn no_sslmode_is_plain_as_before() {
        let c = ConnInfo::parse("postgres://u@127.0.0.1/x", None).unwrap();
        assert_eq!(c.tls.mode(), SslMode::Disable);
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let c = ConnInfo::parse("host=127.0.0.1 user=u sslmode=require", None).unwrap();
        assert_eq!(c.tls.mode(), SslMode::Require);
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn bad_settings_are_invalid_arguments() {
        for url in [
            "postgres://db/x?sslmode=allow",
            "postgres://db/x?sslmode=verify-full",
            "postgres://db/x?sslmode=verify-ca&sslrootcert=system",
            "postgres://db/x?nonsense=1",
            "postgres://db/x?sslmode=require&channel_binding=require",
        ] {
            let e = ConnInfo::parse(url, None).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{url}: {e:?}");
        }
    }
}
