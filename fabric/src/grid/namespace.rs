//! Namespace names: `shared/<name>` for a named shared map, `instance/<agent>/<instance-id>` for
//! an agent instance's own state.

use super::Error;

/// Longest allowed segment of a namespace name, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 128;

/// What a namespace belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A named map shared by anyone who knows its name.
    Shared { name: &'a str },
    /// The private state of one agent instance.
    Instance { agent: &'a str, instance: &'a str },
}

/// Checks a namespace name and says what it belongs to.
pub fn parse(namespace: &str) -> Result<Kind<'_>, Error> {
    let bad = || Error::InvalidNamespace {
        namespace: clip(namespace),
        reason: "expected 'shared/<name>' or 'instance/<agent>/<instance-id>', each segment \
                 1-128 characters of [A-Za-z0-9._-]"
            .to_owned(),
    };
    let mut parts = namespace.split('/');
    let kind = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("shared"), Some(name), None, None) => Kind::Shared { name },
        (Some("instance"), Some(agent), Some(instance), None) => Kind::Instance { agent, instance },
        _ => return Err(bad()),
    };
    let segments_ok = match &kind {
        Kind::Shared { name } => valid_segment(name),
        Kind::Instance { agent, instance } => valid_segment(agent) && valid_segment(instance),
    };
    if segments_ok { Ok(kind) } else { Err(bad()) }
}

/// Whether `segment` is 1-128 characters of `[A-Za-z0-9._-]`: the rule for namespace
/// segments, and so for agent, delegate and instance names.
pub fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT_BYTES
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Error messages quote what the caller sent, but never more than a line of it.
pub fn clip(s: &str) -> String {
    clip_to(s, 80)
}

/// `s`, cut to at most `max` bytes (on a character boundary) with "..." when cut.
pub fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_two_forms() {
        assert_eq!(parse("shared/orders").unwrap(), Kind::Shared { name: "orders" });
        assert_eq!(
            parse("instance/counter/c-1.a_b").unwrap(),
            Kind::Instance { agent: "counter", instance: "c-1.a_b" }
        );
    }

    #[test]
    fn rejects_everything_else() {
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        for bad in [
            "",
            "shared",
            "shared/",
            "shared/a/b",
            "instance/a",
            "instance/a/",
            "private/a",
            "shared/sp ace",
            "shared/ünï",
            &format!("shared/{long}"),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn error_names_the_namespace_and_the_expected_format() {
        let err = parse("nope").unwrap_err().to_string();
        assert!(err.contains("'nope'") && err.contains("shared/<name>"), "{err}");
    }
}
