//! NATS subject patterns (`*` one token, `>` the rest) and an index that finds every
//! rule whose patterns match a subject in time proportional to the subject's depth,
//! not to the number of rules.

use std::collections::HashMap;

/// Why a subject pattern is not valid.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("subject pattern is empty".to_owned());
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("subject pattern {pattern:?} has an empty token"));
        }
        if token.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(format!(
                "subject pattern {pattern:?} contains whitespace or a control character"
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!("subject pattern {pattern:?}: '>' must be the last token"));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(format!("subject pattern {pattern:?}: wildcards must be whole tokens"));
        }
    }
    Ok(())
}

/// Why a concrete subject (to publish or request on) is not valid.
pub fn check_subject(subject: &str) -> Result<(), String> {
    check_pattern(subject)?;
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(format!("subject {subject:?} contains a wildcard"));
    }
    Ok(())
}

/// True when `pattern` matches the concrete `subject`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// True when every subject `narrow` matches is also matched by `wide`.
pub fn covers(wide: &str, narrow: &str) -> bool {
    let mut narrow_tokens = narrow.split('.');
    for w in wide.split('.') {
        match (w, narrow_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(n)) if n != ">" => {}
            (w, Some(n)) if w == n => {}
            _ => return false,
        }
    }
    narrow_tokens.next().is_none()
}

/// Removes patterns covered by another one of the list (JetStream refuses overlapping
/// filter subjects on one consumer), keeping the first of duplicates.
pub fn minimal_cover(patterns: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let covered = patterns
            .iter()
            .enumerate()
            .any(|(j, q)| j != i && covers(q, p) && (!covers(p, q) || j < i));
        if !covered {
            kept.push(p.clone());
        }
    }
    kept
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    star: Option<Box<Node>>,
    /// Values of patterns ending in `>` here.
    rest: Vec<usize>,
    /// Values of patterns ending exactly here.
    end: Vec<usize>,
}

/// Patterns indexed by token, each carrying a value (a rule's index).
#[derive(Debug, Default)]
pub struct PatternIndex {
    root: Node,
}

impl PatternIndex {
    /// Adds a (valid) pattern with its value.
    pub fn insert(&mut self, pattern: &str, value: usize) {
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            match token {
                ">" => {
                    node.rest.push(value);
                    return;
                }
                "*" => node = node.star.get_or_insert_with(Box::default),
                literal => node = node.literal.entry(literal.to_owned()).or_default(),
            }
        }
        node.end.push(value);
    }

    /// Appends the values of every pattern matching `subject` to `out`, sorted and
    /// without duplicates.
    pub fn find(&self, subject: &str, out: &mut Vec<usize>) {
        let start = out.len();
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.iter().any(|t| t.is_empty()) {
            return;
        }
        Self::walk(&self.root, &tokens, 0, out);
        out[start..].sort_unstable();
        let mut deduped: Vec<usize> = out.drain(start..).collect();
        deduped.dedup();
        out.extend(deduped);
    }

    fn walk(node: &Node, tokens: &[&str], depth: usize, out: &mut Vec<usize>) {
        let Some(token) = tokens.get(depth).copied() else {
            out.extend_from_slice(&node.end);
            return;
        };
        out.extend_from_slice(&node.rest);
        if let Some(next) = node.literal.get(token) {
            Self::walk(next, tokens, depth + 1, out);
        }
        if let Some(next) = &node.star {
            Self::walk(next, tokens, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("sb.evt.ami.*.call.ringing", "sb.evt.ami.pbx1.call.ringing"));
        assert!(!matches("sb.evt.ami.*.call.ringing", "sb.evt.ami.pbx1.call.ended"));
        assert!(matches("sb.evt.>", "sb.evt.ami.pbx1.call.ringing"));
        assert!(!matches("sb.evt.>", "sb.evt"));
        assert!(!matches("sb.evt.*", "sb.evt.a.b"));
        assert!(matches("sb.evt.*", "sb.evt.a"));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(check_pattern("sb..x").is_err());
        assert!(check_pattern("sb.>.x").is_err());
        assert!(check_pattern("sb.a*").is_err());
        assert!(check_pattern("sb.a b").is_err());
        assert!(check_pattern("").is_err());
        assert!(check_subject("sb.push.user.*").is_err());
        assert!(check_subject("sb.push.user.101").is_ok());
    }

    #[test]
    fn overlapping_patterns_reduce_to_a_minimal_cover() {
        let patterns: Vec<String> = [
            "sb.evt.ami.>",
            "sb.evt.ami.*.call.ended",
            "sb.evt.im.x.message",
            "sb.evt.ami.>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(minimal_cover(&patterns), vec!["sb.evt.ami.>", "sb.evt.im.x.message"]);
    }

    #[test]
    fn index_finds_every_matching_pattern_once() {
        let mut index = PatternIndex::default();
        index.insert("sb.evt.ami.*.call.ringing", 0);
        index.insert("sb.evt.>", 1);
        index.insert("sb.evt.ami.pbx1.call.*", 2);
        index.insert("sb.evt.im.*.message", 3);
        index.insert("sb.evt.ami.pbx1.call.ringing", 2);
        let mut out = Vec::new();
        index.find("sb.evt.ami.pbx1.call.ringing", &mut out);
        assert_eq!(out, vec![0, 1, 2]);
        out.clear();
        index.find("sb.evt.im.a.message", &mut out);
        assert_eq!(out, vec![1, 3]);
        out.clear();
        index.find("sb.cmd.x", &mut out);
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn index_agrees_with_matches(
            patterns in proptest::collection::vec("(a|b|\\*)(\\.(a|b|\\*)){0,3}(\\.>)?", 1..8),
            subject in "(a|b|c)(\\.(a|b|c)){0,4}",
        ) {
            let mut index = PatternIndex::default();
            for (i, p) in patterns.iter().enumerate() {
                index.insert(p, i);
            }
            let mut found = Vec::new();
            index.find(&subject, &mut found);
            let expected: Vec<usize> = (0..patterns.len()).filter(|&i| matches(&patterns[i], &subject)).collect();
            prop_assert_eq!(found, expected);
        }

        #[test]
        fn covers_is_sound(wide in "(a|\\*)(\\.(a|\\*)){0,2}(\\.>)?", narrow in "(a|\\*)(\\.(a|\\*)){0,2}(\\.>)?", subject in "(a|b)(\\.(a|b)){0,3}") {
            if covers(&wide, &narrow) && matches(&narrow, &subject) {
                prop_assert!(matches(&wide, &subject));
            }
        }
    }
}
