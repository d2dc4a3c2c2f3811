//! segd: CRM contact segmentation served over gRPC, on PostgreSQL.
//!
//! # Layout
//!
//! A request flows one way: `api` → `service` → (`segment`, `db`) → PostgreSQL.
//!
//! - [`api`]: one module per gRPC service; proto ↔ domain and nothing else.
//!   Errors become statuses in `api::error`, and the workspace comes from
//!   `api::workspace`.
//! - [`service`]: use cases spanning the compiler and several tables
//!   (saving and compiling segments, membership queries, member streams).
//! - [`segment`]: the rule language as pure phases: parse → check → lower to
//!   SQL, plus a reference evaluator.
//! - [`model`]: validated domain types (contacts, events, deals, segments).
//! - [`db`]: one module per aggregate; parameterised SQL scoped to a
//!   workspace; migrations.
//! - [`server`]: the tonic server with health, reflection and shutdown.
//! - [`startup`]: a migrated database from `DATABASE_URL` or the private
//!   cluster ([`cluster`]).
//! - [`config`]: clap flags with environment variables.
//! - [`telemetry`]: tracing setup.
//! - [`traces`]: OpenTelemetry traces over OTLP (optional).
//! - [`observe`]: Prometheus metrics and each call's span.
//! - [`bench`]: the benchmark commands.
//! - [`error`]: the domain error type.
//! - [`proto`]: generated protobuf code.
//! - [`codec`]: the protobuf codec of the generated code (decode errors are
//!   `INVALID_ARGUMENT`).

pub mod api;
pub mod bench;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod db;
pub mod error;
pub mod model;
pub mod observe;
pub mod proto;
pub mod segment;
pub mod server;
pub mod service;
pub mod startup;
pub mod telemetry;
pub mod traces;
