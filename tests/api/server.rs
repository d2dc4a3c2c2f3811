//! Server plumbing: health, the workspace header, shutdown.

use segd::proto::{Contact, CreateContactRequest};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TestApp, violations};

#[tokio::test]
async fn health_reports_serving_for_every_service() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in ["", "segd.v1.ContactService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
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
