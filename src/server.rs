//! The gRPC server: the services, health, reflection (v1 and v1alpha), and
//! graceful shutdown. Tests call [`serve`] on a port-0 listener.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::{
    AppState, admin::Admin, auth::AuthLayer, contacts::Contacts, query::Query, segments::Segments,
};
use crate::proto::{
    FILE_DESCRIPTOR_SET, contact_service_server::ContactServiceServer,
    query_service_server::QueryServiceServer, segment_service_server::SegmentServiceServer,
    workspace_service_server::WorkspaceServiceServer,
};

/// TLS for the gRPC server: PEM contents.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The server's certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// With it, clients must present a certificate signed by this CA.
    pub client_ca: Option<Vec<u8>>,
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// After the shutdown signal, how long segd keeps serving new calls
    /// while health reports NOT_SERVING, so load balancers stop routing to it
    /// before it stops accepting.
    pub drain: Duration,
    /// Serve TLS (else plaintext HTTP/2).
    pub tls: Option<Tls>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            drain: Duration::ZERO,
            tls: None,
        }
    }
}

/// Every health name segd reports: the server as a whole and each service.
const HEALTH_NAMES: [&str; 5] = [
    "",
    "segd.v1.ContactService",
    "segd.v1.SegmentService",
    "segd.v1.QueryService",
    "segd.v1.WorkspaceService",
];

/// Serves every segd service on `listener` until `shutdown` resolves. On
/// shutdown, health turns NOT_SERVING for every name (watchers are told at
/// once), calls are still served for `opts.drain`, then streams are
/// cancelled through `state.shutdown`, new calls refused, and in-flight
/// unary calls allowed to finish.
///
/// # Errors
/// Reflection could not be built or the transport failed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in HEALTH_NAMES {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        // Each builder only registers its own version; list both, so either
        // reflection service shows up in `grpcurl list`.
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let max = opts.max_message_bytes;
    let contacts = ContactServiceServer::new(Contacts::new(state.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let segments = SegmentServiceServer::new(Segments::new(state.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let query = QueryServiceServer::new(Query::new(state.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = WorkspaceServiceServer::new(Admin::new(state.clone()));
    if matches!(*state.auth, crate::api::auth::Auth::InsecureDev) {
        tracing::warn!(
            "--insecure-dev-auth: callers are not authenticated; any caller may read and write any workspace named in the x-segd-workspace header (configure --jwt-secret or --jwks-file)"
        );
    }
    let auth = AuthLayer(state.auth.clone());
    let l = &state.limits;
    let shed = crate::api::shed::ShedLayer::new(l.max_queries, l.max_writes, l.shed_wait);

    // Keeps planner statistics fresh for what this server writes.
    tokio::spawn(
        state
            .statistics
            .clone()
            .run(state.owner.clone(), state.shutdown.clone()),
    );

    // Hears the change feed's notifications for WatchMembership.
    tokio::spawn(
        state
            .feed
            .clone()
            .run(state.feed_db.clone(), state.shutdown.clone()),
    );

    // Keeps read replicas' staleness known.
    tokio::spawn(state.replicas.clone().run(
        state.owner.clone(),
        state.limits.replica_check_interval,
        state.shutdown.clone(),
    ));

    // Keeps live segments' stored memberships current.
    tokio::spawn(state.live.clone().run(state.shutdown.clone()));

    let token = state.shutdown.clone();
    let drain = opts.drain;
    let signal = async move {
        shutdown.await;
        for name in HEALTH_NAMES {
            reporter
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        if !drain.is_zero() {
            tracing::info!(drain = ?drain, "shutting down: health is NOT_SERVING; still serving while load balancers notice");
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down: refusing new calls, cancelling streams");
        token.cancel();
    };

    tracing::info!(addr = %listener.local_addr()?, "serving gRPC");
    // Without TCP_NODELAY a small frame (a first batch, a stream's last
    // message) can wait for the client's delayed ACK, up to 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok::<_, std::io::Error>(conn)
    });
    let mut builder = Server::builder();
    if let Some(tls) = &opts.tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
        tracing::info!(
            client_certificates = tls.client_ca.is_some(),
            "serving gRPC over TLS"
        );
    }
    builder
        .layer(crate::observe::MetricsLayer)
        .layer(auth)
        .layer(shed)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(contacts)
        .add_service(segments)
        .add_service(query)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}
