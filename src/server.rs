//! The gRPC server: the services, health, reflection (v1 and v1alpha), and
//! graceful shutdown. Tests call [`serve`] on a port-0 listener.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::api::{AppState, contacts::Contacts, query::Query, segments::Segments, workspace};
use crate::proto::{
    FILE_DESCRIPTOR_SET, contact_service_server::ContactServiceServer,
    query_service_server::QueryServiceServer, segment_service_server::SegmentServiceServer,
};

/// Serves every segd service on `listener` until `shutdown` resolves. On
/// shutdown, health turns NOT_SERVING, streams are cancelled through
/// `state.shutdown`, and in-flight unary calls are allowed to finish.
///
/// # Errors
/// Reflection could not be built or the transport failed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    max_message_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<ContactServiceServer<Contacts>>()
        .await;
    reporter
        .set_serving::<SegmentServiceServer<Segments>>()
        .await;
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

    let contacts = ContactServiceServer::new(Contacts::new(state.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let segments = SegmentServiceServer::new(Segments::new(state.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let query = QueryServiceServer::new(Query::new(state.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);

    let token = state.shutdown.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new calls, cancelling streams");
        reporter
            .set_not_serving::<ContactServiceServer<Contacts>>()
            .await;
        reporter
            .set_not_serving::<SegmentServiceServer<Segments>>()
            .await;
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
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(contacts, workspace::interceptor))
        .add_service(InterceptedService::new(segments, workspace::interceptor))
        .add_service(InterceptedService::new(query, workspace::interceptor))
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}
