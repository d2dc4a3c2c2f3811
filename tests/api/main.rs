//! segd's integration tests: one binary, a fresh database and server per test.

mod contacts;
mod differential;
mod grpcurl;
mod helpers;
mod query;
mod segments;
mod server;
