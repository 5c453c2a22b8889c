//! [`EventFilter`]: which events `GET /v1/events`, `GET /v1/events/stream` and gRPC `Events`
//! send, so a holder can follow only its own notices.
//!
//! In a query string the filter is the parameters `object`, `prefix`, `owner` and `kind`, each
//! repeatable (`kind` also comma-separated: `kind=wanted,expiry`). An event passes when it
//! passes every parameter given:
//!
//! * `object` and `prefix` together select objects: the event's object is one of the `object`
//!   values, or starts with one of the `prefix` values (a plain string prefix, as in
//!   `GET /v1/locks?prefix=`: `/vol/a` also selects `/vol/ab`; write `/vol/a/` for the
//!   directory's contents);
//! * `owner`: the event's owner is one of them (for a `wanted` notice, the holder: the owner the
//!   notice is for; events without an owner, refused releases, never pass);
//! * `kind`: the event's kind is one of them.
//!
//! Filtering never renumbers events: each keeps the sequence number of the log, so `after=` and
//! `Last-Event-ID` resume a filtered stream exactly where it was (the events skipped in between
//! did not pass the filter).

use lockcore::LockError;

use crate::event::{Event, EventKind};

/// The most values one filter parameter (`object`, `prefix`, `owner`) may take, so that
/// checking an event stays cheap.
pub const MAX_FILTER_VALUES: usize = 64;

/// Which events to send: every event passes the empty (default) filter. See the module docs of
/// `lockd_wire::filter` for the query parameters and what they select.
///
/// ```
/// use lockd_wire::{Event, EventFilter, EventKind};
///
/// let mine = EventFilter::default().owner("node-7").kind(EventKind::Wanted);
/// let time = std::time::SystemTime::now();
/// let notice = Event::new(1, time, EventKind::Wanted, "/vol/a").with_owner("node-7");
/// assert!(mine.matches(&notice));
/// assert!(!mine.matches(&Event::new(2, time, EventKind::Grant, "/vol/a").with_owner("node-7")));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Objects selected by name.
    pub objects: Vec<String>,
    /// Objects selected by a leading part of their name.
    pub prefixes: Vec<String>,
    /// Owners selected.
    pub owners: Vec<String>,
    /// Kinds selected.
    pub kinds: Vec<EventKind>,
}

impl EventFilter {
    /// Also selects events about `object`.
    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.objects.push(object.into());
        self
    }

    /// Also selects events about objects starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Also selects events whose owner is `owner`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owners.push(owner.into());
        self
    }

    /// Also selects events of `kind`.
    pub fn kind(mut self, kind: EventKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Whether every event passes (no parameter given).
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
            && self.prefixes.is_empty()
            && self.owners.is_empty()
            && self.kinds.is_empty()
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let object_selected = (self.objects.is_empty() && self.prefixes.is_empty())
            || self.objects.contains(&event.object)
            || self.prefixes.iter().any(|p| event.object.starts_with(p));
        let owner_selected = self.owners.is_empty()
            || event
                .owner
                .as_ref()
                .is_some_and(|owner| self.owners.contains(owner));
        let kind_selected = self.kinds.is_empty() || self.kinds.contains(&event.kind);
        object_selected && owner_selected && kind_selected
    }

    /// Checks the limits: at most [`MAX_FILTER_VALUES`] values per parameter, no empty
    /// `object` or `owner`, no [`EventKind::Unknown`]. Refusals are
    /// [`LockError::InvalidArgument`] naming the parameter.
    pub fn check(&self) -> Result<(), LockError> {
        for (field, values) in [
            ("object", &self.objects),
            ("prefix", &self.prefixes),
            ("owner", &self.owners),
        ] {
            if values.len() > MAX_FILTER_VALUES {
                return Err(LockError::invalid_argument(
                    field,
                    format!("at most {MAX_FILTER_VALUES} values may be given"),
                ));
            }
        }
        for (field, values) in [("object", &self.objects), ("owner", &self.owners)] {
            if values.iter().any(String::is_empty) {
                return Err(LockError::invalid_argument(field, "must not be empty"));
            }
        }
        if self.kinds.contains(&EventKind::Unknown) {
            return Err(LockError::invalid_argument("kind", unknown_kind("unknown")));
        }
        Ok(())
    }

    /// The filter a query's `(name, value)` pairs (already percent-decoded) give, ignoring
    /// every other name. A kind that is not one the server writes, and anything
    /// [`EventFilter::check`] refuses, is [`LockError::InvalidArgument`] naming the parameter.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, LockError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut filter = Self::default();
        for (name, value) in pairs {
            let value = value.as_ref();
            match name.as_ref() {
                "object" => filter.objects.push(value.to_owned()),
                "prefix" => filter.prefixes.push(value.to_owned()),
                "owner" => filter.owners.push(value.to_owned()),
                "kind" => {
                    for name in value.split(',') {
                        let name = name.trim();
                        let kind = EventKind::from_name(name).ok_or_else(|| {
                            LockError::invalid_argument("kind", unknown_kind(name))
                        })?;
                        if !filter.kinds.contains(&kind) {
                            filter.kinds.push(kind);
                        }
                    }
                }
                _ => {}
            }
            // Checked as it grows, so a huge query is refused without being held whole.
            if filter.objects.len() + filter.prefixes.len() + filter.owners.len()
                > 3 * MAX_FILTER_VALUES
            {
                break;
            }
        }
        filter.check()?;
        Ok(filter)
    }

    /// The `(name, value)` pairs of this filter in a query string, to be percent-encoded by the
    /// caller: one pair per value, kinds joined with commas.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        pairs.extend(self.objects.iter().map(|o| ("object", o.clone())));
        pairs.extend(self.prefixes.iter().map(|p| ("prefix", p.clone())));
        pairs.extend(self.owners.iter().map(|o| ("owner", o.clone())));
        if !self.kinds.is_empty() {
            let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
            pairs.push(("kind", kinds.join(",")));
        }
        pairs
    }
}

fn unknown_kind(name: &str) -> String {
    let known: Vec<&str> = EventKind::WRITTEN.iter().map(|k| k.as_str()).collect();
    format!("unknown event kind `{name}`; known: {}", known.join(", "))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn event(kind: EventKind, object: &str, owner: Option<&str>) -> Event {
        let event = Event::new(1, SystemTime::now(), kind, object);
        match owner {
            Some(owner) => event.with_owner(owner),
            None => event,
        }
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<EventFilter, LockError> {
        EventFilter::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn the_empty_filter_passes_every_event() {
        let filter = parse(&[("after", "3"), ("limit", "10")]).unwrap();
        assert!(filter.is_empty());
        assert!(filter.matches(&event(EventKind::ReleaseRefused, "x", None)));
    }

    /// Objects named and objects under a prefix are both selected; the rest are not.
    #[test]
    fn objects_and_prefixes_select_objects_together() {
        let filter = parse(&[("object", "/f"), ("prefix", "/vol/a/")]).unwrap();
        assert!(filter.matches(&event(EventKind::Grant, "/f", Some("o"))));
        assert!(filter.matches(&event(EventKind::Grant, "/vol/a/x", Some("o"))));
        assert!(!filter.matches(&event(EventKind::Grant, "/vol/ab", Some("o"))));
        assert!(!filter.matches(&event(EventKind::Grant, "/f/g", Some("o"))));
    }

    /// Parameters combine with "and"; the values of one parameter with "or".
    #[test]
    fn parameters_combine_and_values_alternate() {
        let filter = parse(&[
            ("owner", "alice"),
            ("owner", "bob"),
            ("kind", "wanted,expiry"),
            ("prefix", "/vol/"),
        ])
        .unwrap();
        assert_eq!(filter.kinds, vec![EventKind::Wanted, EventKind::Expiry]);
        assert!(filter.matches(&event(EventKind::Wanted, "/vol/a", Some("alice"))));
        assert!(filter.matches(&event(EventKind::Expiry, "/vol/b", Some("bob"))));
        assert!(!filter.matches(&event(EventKind::Grant, "/vol/a", Some("alice"))));
        assert!(!filter.matches(&event(EventKind::Wanted, "/vol/a", Some("carol"))));
        assert!(!filter.matches(&event(EventKind::Wanted, "/tmp/a", Some("alice"))));
        assert!(!filter.matches(&event(EventKind::Wanted, "/vol/a", None)));
    }

    #[test]
    fn kinds_may_be_repeated_or_comma_separated() {
        let repeated = parse(&[("kind", "grant"), ("kind", "release")]).unwrap();
        let listed = parse(&[("kind", "grant, release")]).unwrap();
        assert_eq!(repeated, listed);
        assert_eq!(repeated.kinds, vec![EventKind::Grant, EventKind::Release]);
    }

    #[test]
    fn unknown_kinds_and_empty_names_are_refused_naming_the_parameter() {
        for (pairs, field) in [
            (vec![("kind", "granted")], "kind"),
            (vec![("kind", "unknown")], "kind"),
            (vec![("kind", "grant,")], "kind"),
            (vec![("object", "")], "object"),
            (vec![("owner", "")], "owner"),
        ] {
            match parse(&pairs) {
                Err(LockError::InvalidArgument { field: got, .. }) => {
                    assert_eq!(got, field, "{pairs:?}")
                }
                other => panic!("{pairs:?} gave {other:?}"),
            }
        }
    }

    /// The client reads the `field` of a refusal back from the server's envelope.
    #[test]
    fn refused_parameters_are_argument_names_a_client_reads_back() {
        for field in ["object", "prefix", "owner", "kind"] {
            assert_eq!(crate::argument_field(field), Some(field));
        }
    }

    #[test]
    fn too_many_values_are_refused() {
        let many: Vec<(&str, String)> = (0..=MAX_FILTER_VALUES)
            .map(|i| ("object", format!("o{i}")))
            .collect();
        assert!(matches!(
            EventFilter::from_pairs(many),
            Err(LockError::InvalidArgument {
                field: "object",
                ..
            })
        ));
    }

    #[test]
    fn query_pairs_read_back_as_the_same_filter() {
        let filter = EventFilter::default()
            .object("/f")
            .prefix("/vol/")
            .owner("node-1")
            .kind(EventKind::Wanted)
            .kind(EventKind::Grant);
        let pairs = filter.query_pairs();
        assert_eq!(pairs.last(), Some(&("kind", "wanted,grant".to_owned())));
        assert_eq!(EventFilter::from_pairs(pairs).unwrap(), filter);
    }
}
