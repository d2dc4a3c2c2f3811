//! Segment actions at save time: checked against the workspace, and a set
//! of actions that could trigger itself again refused with its cycle named.

use std::collections::BTreeSet;

use super::segments::Definitions;
use crate::error::{Error, Result};
use crate::model::deps::affects;
use crate::model::segment::{Definition, Segment, SegmentKind};
use crate::segment::deps;

/// A segment whose actions run, with what it reads and what they write.
struct Node<'a> {
    segment: &'a Segment,
    reads: BTreeSet<String>,
    writes: BTreeSet<String>,
}

/// A cycle among the actions of the workspace's `segments`: segment names,
/// the first repeated at the end, where each one's actions change what the
/// next one's definition reads (so an action can decide whether it fires
/// again). `None` when there is none.
pub fn cycle(segments: &[Segment], defs: &Definitions) -> Option<Vec<String>> {
    let inlined = defs.inlined();
    let nodes: Vec<Node<'_>> = segments
        .iter()
        .filter(|s| s.live && s.enabled && s.kind == SegmentKind::Dynamic && !s.actions.is_empty())
        .filter_map(|s| {
            let v = inlined
                .validate(&Definition::saved(s.rule.clone()?, &s.name), None)
                .ok()?;
            Some(Node {
                segment: s,
                reads: deps::of(&v.checked.pred),
                writes: s.actions.iter().flat_map(|a| a.writes()).collect(),
            })
        })
        .collect();
    let feeds = |i: usize, j: usize| {
        nodes[i]
            .writes
            .iter()
            .any(|w| nodes[j].reads.iter().any(|r| affects(w, r)))
    };
    // Depth-first, with the path on a stack: 0 unseen, 1 on the path, 2 done.
    let mut state = vec![0u8; nodes.len()];
    for start in 0..nodes.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (at, ref mut next)) = path.last_mut() {
            if *next == nodes.len() {
                state[at] = 2;
                path.pop();
                continue;
            }
            let to = *next;
            *next += 1;
            if !feeds(at, to) {
                continue;
            }
            match state[to] {
                0 => {
                    state[to] = 1;
                    path.push((to, 0));
                }
                1 => {
                    let from = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                    let mut names: Vec<String> = path[from..]
                        .iter()
                        .map(|(n, _)| nodes[*n].segment.name.clone())
                        .collect();
                    names.push(nodes[to].segment.name.clone());
                    return Some(names);
                }
                _ => {}
            }
        }
    }
    None
}

/// Refuses the workspace's actions as saved (inside the saving transaction)
/// when they form a cycle.
///
/// # Errors
/// `InvalidArgument` on `segment.actions`, naming the cycle.
pub fn refuse_cycles(segments: &[Segment], defs: &Definitions) -> Result<()> {
    match cycle(segments, defs) {
        None => Ok(()),
        Some(names) => Err(Error::invalid(
            "segment.actions",
            format!(
                "segment actions would form a cycle, each changing what the next one's definition reads: {}",
                names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        )),
    }
}
