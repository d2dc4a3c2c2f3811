//! Use cases that span the segment compiler and several tables: each loads
//! what it needs, runs the pure phases, and stores the result. API handlers
//! call exactly one of these.

pub mod actions;
pub mod feed;
pub mod live;
pub mod metrics;
pub mod query;
pub mod segments;
pub mod stats;
pub mod stream;
pub mod writes;
