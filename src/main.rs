//! The `segd` binary: serve (default), migrate, or benchmark.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use opentelemetry::trace::TracerProvider as _;
use segd::config::{Cli, Command, Config};
use segd::{api, bench, server, startup, telemetry, traces};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("segd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only with an endpoint: no exporter is built otherwise.
    let endpoint = cli
        .config
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty());
    let traces = match endpoint.map(|e| {
        let _rt = runtime.enter();
        traces::provider(e, &cli.config.otel_service_name)
    }) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("segd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(
        cli.config.log_format,
        traces.as_ref().map(|p| p.tracer("segd")),
    );
    if let Some(e) = endpoint {
        tracing::info!(endpoint = e, "exporting traces over OTLP");
    }
    let result = runtime.block_on(run(cli));
    if let Some(p) = traces {
        // Sends the spans still batched; the export runs on the runtime.
        let flushed =
            runtime.block_on(async { tokio::task::spawn_blocking(move || p.shutdown()).await });
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "could not send the last traces");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("segd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => {
            let db = startup::database(&cli.config).await?;
            tracing::info!("migrations are up to date");
            stop(db).await;
            Ok(())
        }
        Command::Bench(b) => bench::run(b, cli.config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let db = startup::database(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let limits = api::Limits {
        query_timeout: config.query_timeout,
        stream_timeout: config.stream_timeout,
        stream_stall_timeout: config.stream_stall_timeout,
        stream_connect_timeout: config.stream_connect_timeout,
        max_query_cost: config.max_query_cost,
        max_streams: config.max_streams,
        max_queries: config.max_queries,
        max_writes: config.max_writes,
        shed_wait: config.shed_wait,
        statistics: segd::service::stats::Thresholds {
            min_rows: config.analyze_min_rows,
            ..Default::default()
        },
        live: segd::service::live::Options {
            tick: config.live_tick,
            retention_age: config.feed_retention,
            retention_count: config.feed_retention_count,
            max_action_depth: config.max_action_depth,
            ..Default::default()
        },
        replica_max_staleness: config.replica_max_staleness,
        replica_check_interval: config.replica_check_interval,
        ..api::Limits::default()
    };
    let mut state = db.state(limits);
    state.auth = std::sync::Arc::new(auth(&config).await?);
    let read_urls: Vec<&str> = config
        .read_database_urls
        .iter()
        .map(|u| u.expose())
        .collect();
    if !read_urls.is_empty() {
        let replicas = segd::db::replicas::Replicas::connect(
            &read_urls,
            config.database_ca.as_deref(),
            config.pool_size,
            config.statement_timeout,
            state.limits.stream_socket_buffer,
        )?;
        for r in replicas.all() {
            tracing::info!(replica = %r.name, max_staleness = ?config.replica_max_staleness, "reading from a replica");
        }
        state.replicas = std::sync::Arc::new(replicas);
    }
    if let Some(addr) = config.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        tokio::spawn(segd::observe::serve(
            l,
            db.pool.clone(),
            state.shutdown.clone(),
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve(
        listener,
        state,
        server::ServeOptions {
            max_message_bytes: config.max_message_bytes,
            drain: config.shutdown_drain,
            tls: tls(&config)?,
        },
        async {
            let _ = rx.await;
        },
    ));
    tokio::select! {
        r = &mut server => r??,
        () = shutdown_signal() => {
            let _ = tx.send(());
            match tokio::time::timeout(config.shutdown_drain + config.shutdown_grace, &mut server).await {
                Ok(r) => r??,
                Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "calls still running after the grace period; closing them"),
            }
        }
    }
    stop(db).await;
    Ok(())
}

/// The TLS files the flags name, read.
fn tls(config: &Config) -> anyhow::Result<Option<server::Tls>> {
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    Ok(Some(server::Tls {
        cert: read(cert)?,
        key: read(key)?,
        client_ca: config.tls_client_ca.as_deref().map(read).transpose()?,
    }))
}

/// How callers are authenticated: bearer tokens when a key is configured,
/// else insecure dev mode. A JWKS URL is fetched here, before serving.
async fn auth(config: &Config) -> anyhow::Result<api::auth::Auth> {
    if config
        .jwt_secret
        .as_ref()
        .is_some_and(|s| s.expose().is_empty())
    {
        anyhow::bail!("--jwt-secret (SEGD_JWT_SECRET) is empty; give a secret or leave it unset");
    }
    let keys =
        config.jwt_secret.is_some() || config.jwks_file.is_some() || config.jwks_url.is_some();
    match (keys, config.insecure_dev_auth) {
        (true, true) => anyhow::bail!(
            "--insecure-dev-auth and a JWT key (--jwt-secret, --jwks-file, --jwks-url) exclude each other; choose one"
        ),
        (true, false) => {
            let jwks_url = match &config.jwks_url {
                Some(url) => Some(api::auth::JwksUrlOptions {
                    refresh: config.jwks_refresh,
                    ca_pem: match &config.jwks_ca {
                        Some(p) => Some(
                            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                        ),
                        None => None,
                    },
                    ..api::auth::JwksUrlOptions::new(url)
                }),
                None => None,
            };
            api::auth::Auth::jwt(api::auth::JwtOptions {
                secret: config.jwt_secret.as_ref().map(|s| s.expose().to_string()),
                jwks_file: config.jwks_file.clone(),
                jwks_url,
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
            })
            .await
        }
        (false, explicit) => {
            if !explicit {
                tracing::warn!(
                    "no JWT key is configured (--jwt-secret, --jwks-file, --jwks-url): running with --insecure-dev-auth"
                );
            }
            Ok(api::auth::Auth::InsecureDev)
        }
    }
}

/// Closes the pool and stops the private cluster, if any.
async fn stop(db: startup::Database) {
    db.pool.close();
    db.owner.close();
    if let Some(cluster) = db.cluster {
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
