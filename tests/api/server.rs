//! Server plumbing: health, the workspace header, shutdown.

use segd::proto::{Contact, CreateContactRequest};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TestApp, violations};

/// The server as a whole and every service, by its full name.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "segd.v1.ContactService",
    "segd.v1.SegmentService",
    "segd.v1.QueryService",
];

async fn health_of(app: &TestApp, service: &str) -> ServingStatus {
    HealthClient::new(app.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test]
async fn health_reports_serving_for_every_service() {
    let app = TestApp::spawn().await;
    for service in HEALTH_NAMES {
        assert_eq!(
            health_of(&app, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
}

/// From the shutdown signal on, health says NOT_SERVING for every name:
/// watchers are told at once, and during the drain period (calls still
/// served) a check says so too.
#[tokio::test]
async fn shutdown_turns_health_to_not_serving_for_every_service() {
    use futures::StreamExt;
    let mut app = TestApp::with()
        .drain(std::time::Duration::from_secs(3600))
        .spawn()
        .await;
    let mut watches = Vec::new();
    for service in HEALTH_NAMES {
        let mut w = HealthClient::new(app.channel().await)
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = w.next().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        watches.push(w);
    }
    let channel = app.channel().await;
    app.signal_shutdown();
    for (service, w) in HEALTH_NAMES.iter().zip(&mut watches) {
        let next = w.next().await.unwrap().unwrap();
        assert_eq!(next.status(), ServingStatus::NotServing, "{service:?}");
    }
    // Still draining: a check on a connection opened before the signal.
    let mut health = HealthClient::new(channel);
    for service in HEALTH_NAMES {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::NotServing, "{service:?}");
    }
}

/// A message that does not decode is the caller's fault.
#[tokio::test]
async fn an_undecodable_message_is_invalid_argument() {
    let app = TestApp::spawn().await;
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();
    // Field 1 of GetContactRequest is a message; send it as a varint.
    let codec =
        tonic_prost::ProstCodec::<prost_types::Duration, segd::proto::GetContactResponse>::default(
        );
    let err = grpc
        .unary(
            crate::helpers::req(
                "w",
                prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                },
            ),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/segd.v1.ContactService/GetContact",
            ),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn calls_without_a_valid_workspace_header_are_rejected() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let err = c
        .create_contact(CreateContactRequest {
            contact: Some(Contact {
                email: "a@b.co".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["x-segd-workspace".to_string()]);

    let mut r = tonic::Request::new(CreateContactRequest::default());
    r.metadata_mut()
        .insert("x-segd-workspace", "Not Valid!".parse().unwrap());
    let err = c.create_contact(r).await.unwrap_err();
    assert_eq!(violations(&err), vec!["x-segd-workspace".to_string()]);

    // Two workspaces named: refused, not first-wins.
    let mut r = tonic::Request::new(CreateContactRequest::default());
    r.metadata_mut()
        .append("x-segd-workspace", "a".parse().unwrap());
    r.metadata_mut()
        .append("x-segd-workspace", "b".parse().unwrap());
    let err = c.create_contact(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["x-segd-workspace".to_string()]);
}

#[tokio::test]
async fn shutdown_finishes_and_cancels_the_stream_token() {
    let mut app = TestApp::spawn().await;
    let token = app.state.shutdown.clone();
    assert!(!token.is_cancelled());
    tokio::time::timeout(std::time::Duration::from_secs(10), app.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect("server exits cleanly");
    assert!(token.is_cancelled());
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    use futures::StreamExt;
    let mut app = TestApp::spawn().await;
    app.bulk_contacts("w", 100_000).await;
    let mut q = segd::proto::query_service_client::QueryServiceClient::new(app.channel().await);
    let mut r = segd::proto::StreamMembersRequest {
        selector: crate::helpers::named("Leads"),
        ..Default::default()
    };
    r.read_mask = Some(prost_types::FieldMask {
        paths: vec!["external_id".into()],
    });
    let mut s = q
        .stream_members(crate::helpers::req("w", r))
        .await
        .unwrap()
        .into_inner();
    s.next().await.unwrap().unwrap();
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(m) = s.next().await {
            if let Err(e) = m {
                last = Some(e.code());
                break;
            }
        }
        last
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), app.shutdown())
        .await
        .expect("shutdown is bounded even with a stream open")
        .expect("server exits cleanly");
    let code = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        code,
        Some(tonic::Code::Unavailable),
        "the client learns the stream was cut and can resume"
    );
}

/// A value tokio-postgres cannot encode or decode is a bug in segd: INTERNAL,
/// so clients do not retry it. A lost connection is UNAVAILABLE.
#[tokio::test]
async fn client_side_database_errors_are_internal_and_lost_connections_unavailable() {
    use segd::error::Error;
    let app = TestApp::spawn().await;
    let db = app.db().await;
    let encode = db.query("SELECT $1::int4", &[&"text"]).await.unwrap_err();
    assert!(matches!(
        segd::db::error::from_pg(encode),
        Error::Internal(_)
    ));
    let row = db.query_one("SELECT 'x'::text", &[]).await.unwrap();
    let decode = row.try_get::<_, i32>(0).unwrap_err();
    assert!(matches!(
        segd::db::error::from_pg(decode),
        Error::Internal(_)
    ));
    let pid: i32 = db
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    app.db()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let mut lost = None;
    for _ in 0..100 {
        match db.query_one("SELECT 1", &[]).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => {
                lost = Some(e);
                break;
            }
        }
    }
    let lost = segd::db::error::from_pg(lost.expect("the connection is gone"));
    assert!(matches!(lost, Error::Unavailable(_)), "{lost:?}");
}
