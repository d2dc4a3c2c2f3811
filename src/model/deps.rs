//! Dependency keys: names for what a write can change and a definition can
//! read. Writes record the keys of what they changed (see `db::changes`);
//! live segments are re-evaluated when a key they read was written.

/// Anything about a contact may have changed (created, deleted, merged).
pub const ANY: &str = "*";
/// Some contact column, tag, label, custom field or subscription changed.
pub const CONTACT: &str = "contact";
/// A deal changed.
pub const DEAL: &str = "deal";

/// The dependency key of a contact column.
pub fn column(name: &str) -> String {
    format!("col:{name}")
}

/// The dependency key of an event type.
pub fn event(t: &str) -> String {
    format!("ev:{t}")
}

/// The dependency key of a custom field.
pub fn attr(k: &str) -> String {
    format!("attr:{k}")
}

/// The dependency key of a subscription channel.
pub fn subscription(ch: &str) -> String {
    format!("sub:{ch}")
}

/// The dependency key of a static or snapshot segment's member list.
pub fn members(segment: i64) -> String {
    format!("seg:{segment}")
}

/// The dependency key of tags.
pub const TAGS: &str = "tag";
/// The dependency key of labels.
pub const LABELS: &str = "label";

/// Whether a definition that reads `dep` may be affected by a write that
/// changed `written`.
pub fn affects(written: &str, dep: &str) -> bool {
    written == ANY
        || written == dep
        || (written == CONTACT && is_contact(dep))
        || (dep == ANY_EVENT && written.starts_with("ev:"))
}

/// What a definition reads of every event, whatever its type.
pub const ANY_EVENT: &str = "ev:*";

fn is_contact(dep: &str) -> bool {
    dep.starts_with("col:")
        || dep.starts_with("attr:")
        || dep.starts_with("sub:")
        || dep == TAGS
        || dep == LABELS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_affect_what_reads_them() {
        assert!(affects(ANY, DEAL));
        assert!(affects(CONTACT, &column("country")));
        assert!(affects(CONTACT, TAGS));
        assert!(!affects(CONTACT, &event("purchase")));
        assert!(affects(&event("purchase"), ANY_EVENT));
        assert!(affects(&event("purchase"), &event("purchase")));
        assert!(!affects(&event("purchase"), &event("email_open")));
        assert!(!affects(DEAL, &column("country")));
        assert!(affects(&members(4), &members(4)));
    }
}
