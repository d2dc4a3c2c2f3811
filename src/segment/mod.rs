//! The segment rule language, as pure phases (no I/O):
//!
//! text ─[`parse`]→ [`ast::Rule`] ─[`check`]→ [`ir::Pred`] ─[`lower`]→ [`plan::Plan`] ─[`render`]→ SQL
//!
//! - [`ast`]: the rule tree exactly as callers write it (text or proto).
//! - [`lex`] and [`parse`]: the text form; errors carry line and column.
//! - [`print`]: the canonical text of a tree; `parse(print(t)) == t`.
//! - [`check`]: resolves fields, types values and segment references
//!   against a workspace [`check::Catalog`], naming the path of each problem.
//! - [`ir`]: the typed, resolved predicate that lowering and evaluation share.
//! - [`lower`]: the set-based shape of the query for a predicate: a plan.
//! - [`plan`]: that plan: sources, top-level conditions, the driver of an
//!   ids-only body, as templates with holes.
//! - [`render`]: the one place plans become SQL, with every option a caller
//!   needs (projection, resume, sampling, ids, order, limit, grouping,
//!   parameter style).
//! - [`eval`]: a reference evaluator over in-memory data, used by the
//!   differential test and to explain why a contact is in a segment.
//! - [`time`]: calendar arithmetic both `lower` and `eval` rely on.
//!
//! In tests, `routing` checks that each statement `render` writes would run
//! on one shard of a cluster distributed by workspace (Citus).

pub mod ast;
pub mod check;
pub mod counts;
pub mod deps;
pub mod eval;
pub mod ir;
pub mod lex;
pub mod lower;
pub mod parse;
pub mod plan;
pub mod print;
pub mod render;
pub mod time;

#[cfg(test)]
mod golden;

#[cfg(test)]
mod proptests;

#[cfg(test)]
pub(crate) mod routing;

#[cfg(test)]
mod routing_tests;
