//! segd's integration tests: one binary, a fresh database and server per test.

mod abandon;
mod actions;
mod auth;
mod contacts;
mod crash;
mod differential;
mod grpcurl;
mod helm;
mod helpers;
mod jwks_url;
mod live;
mod metrics;
mod newcomer;
mod observe;
mod pgbouncer;
mod pgtls;
mod plans;
mod polyglot;
mod query;
mod readme;
mod replicas;
mod restart;
mod rls;
/// The compiler's routing checker (see its module doc), shared with the
/// unit tests.
#[path = "../../src/segment/routing.rs"]
mod routing;
mod segments;
mod server;
mod streams;
mod tls;
mod traces;
mod writes;
