//! Topics and NATS-style topic patterns.
//!
//! Owns: the rules for what a topic is, parsing of patterns and matching.
//! A topic is a dot-separated list of non-empty tokens (`orders.eu.created`).
//! A pattern may use `*` for exactly one token and `>` (last token only) for
//! one or more remaining tokens: `orders.*` matches `orders.created` but not
//! `orders.eu.created`; `orders.>` matches both, but not `orders` itself.
//! Pure code: no I/O.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Checks that `topic` is a valid concrete topic (no wildcards).
///
/// ```
/// assert!(chorus::validate_topic("orders.eu.created").is_ok());
/// assert!(chorus::validate_topic("orders.*").is_err());
/// assert!(chorus::validate_topic("orders..created").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<()> {
    check_tokens(topic, false).map_err(|reason| Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// Token-level validation shared by topics and patterns. Runs on every
/// publish: ASCII text (the usual case) is checked in one pass over its
/// bytes, anything else by [`check_chars`].
fn check_tokens(text: &str, wildcards: bool) -> std::result::Result<(), &'static str> {
    if text.is_empty() {
        return Err("must not be empty");
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err("longer than 1024 bytes");
    }
    if !text.is_ascii() {
        return check_chars(text, wildcards);
    }
    let bytes = text.as_bytes();
    let mut start = 0;
    for end in 0..=bytes.len() {
        let last = end == bytes.len();
        if !last && bytes[end] != b'.' {
            // ASCII whitespace and control characters.
            if bytes[end] <= b' ' || bytes[end] == 0x7f {
                return Err("whitespace or control character");
            }
            continue;
        }
        let token = &bytes[start..end];
        start = end + 1;
        match token {
            [] => return Err("empty token (leading, trailing or double '.')"),
            b"*" if wildcards => {}
            b">" if wildcards && last => {}
            b">" if wildcards => return Err("'>' is only allowed as the last token"),
            _ if token.iter().any(|b| matches!(b, b'*' | b'>')) => {
                return Err(if wildcards {
                    "'*' and '>' must be whole tokens"
                } else {
                    "wildcards '*' and '>' are only allowed in subscription patterns"
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// [`check_tokens`] of any text (Unicode whitespace and control characters).
fn check_chars(text: &str, wildcards: bool) -> std::result::Result<(), &'static str> {
    let count = text.split('.').count();
    for (i, token) in text.split('.').enumerate() {
        if token.is_empty() {
            return Err("empty token (leading, trailing or double '.')");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("whitespace or control character");
        }
        match token {
            "*" if wildcards => {}
            ">" if wildcards && i + 1 == count => {}
            ">" if wildcards => return Err("'>' is only allowed as the last token"),
            _ if token.contains(['*', '>']) => {
                return Err(if wildcards {
                    "'*' and '>' must be whole tokens"
                } else {
                    "wildcards '*' and '>' are only allowed in subscription patterns"
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// One token of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens, last position only.
    Rest,
}

/// A parsed subscription pattern such as `orders.*` or `orders.>`.
///
/// ```
/// let p = chorus::Pattern::parse("orders.>").unwrap();
/// assert!(p.matches("orders.eu.created"));
/// assert!(!p.matches("orders"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    tokens: Vec<Token>,
    /// No wildcard: it matches only a topic equal to its text.
    literal: bool,
}

impl Pattern {
    /// Parses a pattern; a plain topic is a valid pattern matching only itself.
    pub fn parse(pattern: &str) -> Result<Self> {
        check_tokens(pattern, true).map_err(|reason| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        })?;
        let tokens = pattern
            .split('.')
            .map(|t| match t {
                "*" => Token::One,
                ">" => Token::Rest,
                lit => Token::Literal(lit.into()),
            })
            .collect::<Vec<_>>();
        Ok(Pattern {
            text: pattern.into(),
            literal: tokens.iter().all(|t| matches!(t, Token::Literal(_))),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches this pattern. Does not allocate.
    pub fn matches(&self, topic: &str) -> bool {
        if self.literal {
            return *self.text == *topic;
        }
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match (token, parts.next()) {
                (_, None) => return false,
                (_, Some("")) => return false,
                (Token::Rest, Some(_)) => return true,
                (Token::One, Some(_)) => {}
                (Token::Literal(l), Some(p)) => {
                    if **l != *p {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Most distinct topics an [`Interner`] holds before it starts over.
const MAX_INTERNED: usize = 4096;

/// Received topics, validated once and shared: an envelope whose topic was
/// seen before costs neither an allocation nor a validation. Bounded: it
/// forgets every topic once [`MAX_INTERNED`] distinct ones are held.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    seen: fnv::FnvHashSet<Arc<str>>,
    last: Option<Arc<str>>,
}

impl Interner {
    /// The shared copy of `topic`, or why it is not a valid topic.
    pub(crate) fn intern(&mut self, topic: &str) -> std::result::Result<Arc<str>, &'static str> {
        if let Some(last) = self.last.as_ref().filter(|l| ***l == *topic) {
            return Ok(last.clone());
        }
        let shared = match self.seen.get(topic) {
            Some(t) => t.clone(),
            None => {
                check_tokens(topic, false)?;
                if self.seen.len() >= MAX_INTERNED {
                    self.seen.clear();
                }
                let t: Arc<str> = topic.into();
                self.seen.insert(t.clone());
                t
            }
        };
        self.last = Some(shared.clone());
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_star_and_rest() {
        let exact = Pattern::parse("orders.created").unwrap();
        assert!(exact.matches("orders.created"));
        assert!(!exact.matches("orders.created.eu"));
        assert!(!exact.matches("orders"));

        let star = Pattern::parse("orders.*").unwrap();
        assert!(star.matches("orders.created"));
        assert!(!star.matches("orders.eu.created"));
        assert!(!star.matches("orders"));
        assert!(!star.matches("invoices.created"));

        let mid = Pattern::parse("orders.*.created").unwrap();
        assert!(mid.matches("orders.eu.created"));
        assert!(!mid.matches("orders.eu.deleted"));

        let rest = Pattern::parse("orders.>").unwrap();
        assert!(rest.matches("orders.created"));
        assert!(rest.matches("orders.eu.created"));
        assert!(!rest.matches("orders"));

        let all = Pattern::parse(">").unwrap();
        assert!(all.matches("a"));
        assert!(all.matches("a.b.c"));
    }

    #[test]
    fn invalid_topics_and_patterns() {
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "a*b", "a\n",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad:?} accepted as topic");
        }
        for bad in ["", "a.>.b", "a.b*", "a..b", "> .a", "a.>x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted as pattern");
        }
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
        let err = validate_topic("a..b").unwrap_err().to_string();
        assert!(err.contains("empty token"), "{err}");
    }

    fn token() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,4}"
    }

    proptest! {
        #[test]
        fn the_byte_check_agrees_with_the_char_check(
            text in "[a-c.*> \t\x7f\x01]{1,12}",
            wildcards in any::<bool>(),
        ) {
            prop_assert_eq!(check_tokens(&text, wildcards), check_chars(&text, wildcards));
        }

        #[test]
        fn literal_pattern_matches_only_itself(
            a in prop::collection::vec(token(), 1..5),
            b in prop::collection::vec(token(), 1..5),
        ) {
            let (ta, tb) = (a.join("."), b.join("."));
            let p = Pattern::parse(&ta).unwrap();
            prop_assert!(p.matches(&ta));
            prop_assert_eq!(p.matches(&tb), ta == tb);
        }

        #[test]
        fn wildcards_follow_token_counts(t in prop::collection::vec(token(), 1..6), k in 0usize..6) {
            let topic = t.join(".");
            let k = k.min(t.len() - 1);
            // Replace token k by '*': matches; prefix + '>' matches iff more tokens follow.
            let mut star = t.clone();
            star[k] = "*".into();
            prop_assert!(Pattern::parse(&star.join(".")).unwrap().matches(&topic));
            let mut rest: Vec<String> = t[..k].to_vec();
            rest.push(">".into());
            prop_assert!(Pattern::parse(&rest.join(".")).unwrap().matches(&topic));
            let mut longer = t.clone();
            longer.push("*".into());
            prop_assert!(!Pattern::parse(&longer.join(".")).unwrap().matches(&topic));
        }

        #[test]
        fn never_panics(p in ".{0,40}", t in ".{0,40}") {
            if let Ok(p) = Pattern::parse(&p) { let _ = p.matches(&t); }
            let _ = validate_topic(&t);
        }
    }

    #[test]
    fn interner_validates_once_shares_and_stays_bounded() {
        let mut i = Interner::default();
        let a = i.intern("orders.created").unwrap();
        let b = i.intern("orders.paid").unwrap();
        assert!(Arc::ptr_eq(&a, &i.intern("orders.created").unwrap()));
        assert!(Arc::ptr_eq(&b, &i.intern("orders.paid").unwrap()));
        assert!(i.intern("orders.*").is_err());
        assert!(i.intern("").is_err());
        for n in 0..3 * MAX_INTERNED {
            i.intern(&format!("t.{n}")).unwrap();
        }
        assert!(i.seen.len() <= MAX_INTERNED);
        assert_eq!(&*i.intern("orders.created").unwrap(), "orders.created");
    }
}
