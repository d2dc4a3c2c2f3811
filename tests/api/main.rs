//! segd's integration tests: one binary, a fresh database and server per test.

mod contacts;
mod grpcurl;
mod helpers;
mod server;
