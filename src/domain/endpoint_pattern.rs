//! Endpoint patterns (SPEC.md §2): which requests a policy applies to, how a pattern matches a
//! request, which of several matching patterns wins, and [`PatternSet`], the compiled form the hot
//! path looks policies up in.
//!
//! # Grammar
//! ```text
//! pattern = "*" | [ method " " ] path
//! method  = 1*20 ASCII letters            ; parsed case-insensitively, stored uppercase
//! path    = "/" [ segment *( "/" segment ) ]
//! segment = literal | "*" | "**"          ; "**" only as the last segment
//! ```
//! `*` alone (no method) matches every endpoint; `GET *` is rejected (`GET /**` says that). A
//! literal may hold any character except `/`, whitespace, control characters, `?`, `#` and `*`
//! (`*` and `**` must be whole segments, so `a*b` is rejected). The whole pattern is at most
//! [`MAX_PATTERN_LEN`] bytes, with no leading or trailing whitespace. Errors are `String`s that
//! name the problem; the admin API returns them as BadRequest field-violation descriptions.
//!
//! # Matching
//! - The request path is cut at the first `?` or `#`, then split on `/`. Empty segments are ignored
//!   in both the pattern and the path (`//` and a trailing `/` are not segments), so extra slashes
//!   never escape a limit. `/` alone has zero segments and matches only the root path. A path that
//!   does not start with `/` is split the same way.
//! - A literal segment matches the identical segment (case-sensitive, no percent-decoding: path
//!   normalisation is Envoy's job). `*` matches exactly one segment, a final `**` zero or more.
//! - A method compares ASCII-case-insensitively. A pattern with a method never matches a request
//!   without one (`None` or empty); a pattern without a method matches any method.
//!
//! # Canonical form
//! [`Display`](fmt::Display) and [`EndpointPattern::as_str`] give the canonical form: uppercase
//! method, single slashes, no trailing slash (`get //a/` → `GET /a`). The store keeps this string
//! and it is what makes (tenant, pattern) unique; equality and hashing use it.
//!
//! # Specificity
//! [`EndpointPattern::specificity`] returns a [`Specificity`] whose `Ord` says how specific a
//! pattern is: **greater is more specific**. In order of precedence:
//! 1. `*` alone is the least specific of all;
//! 2. a method beats no method;
//! 3. segment by segment from the left, literal > `*` > `**`;
//! 4. then the longer pattern (more segments) wins — except that a pattern that ends exactly
//!    where the other goes on with a final `**` ranks higher: `/a` beats `/a/**` for the path
//!    `/a` (where `**` matches zero segments), because an operator who writes both means the exact
//!    one for `/a`. A wildcard never outranks an exact end, in keeping with literal > `*` > `**`;
//! 5. any remaining tie is broken by the canonical string, the lexicographically smaller one
//!    ranking higher. Two different patterns that both match one request never get this far (their
//!    methods and literals would have to be equal), but it makes the order total, so a lookup never
//!    depends on the order policies were loaded in.

use std::fmt;
use std::str::FromStr;

/// The longest endpoint pattern Sluice accepts, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// The longest HTTP method a pattern may name.
pub const MAX_METHOD_LEN: usize = 20;

/// A parsed endpoint pattern such as `GET /v1/orders/*` or `/static/**`. Built only by
/// [`EndpointPattern::parse`]; see the module doc for the grammar and matching rules.
#[derive(Clone, Debug)]
pub struct EndpointPattern {
    /// The canonical form: what `Display` prints, what equality and hashing use.
    canonical: Box<str>,
    /// Uppercase; `None` matches any method.
    method: Option<Box<str>>,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Shape {
    /// `*` alone: every endpoint.
    Everything,
    /// A path pattern; [`Segment::Rest`] can only be last.
    Path(Box<[Segment]>),
}

#[derive(Clone, Debug)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Rest,
}

impl EndpointPattern {
    /// The pattern that matches every endpoint.
    pub const EVERYTHING: &'static str = "*";

    /// Parses a pattern, naming the problem when it is not one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "must be at most {MAX_PATTERN_LEN} bytes, got {}",
                raw.len()
            ));
        }
        if raw.trim() != raw {
            return Err("must not start or end with whitespace".into());
        }
        if raw == Self::EVERYTHING {
            return Ok(Self {
                canonical: Self::EVERYTHING.into(),
                method: None,
                shape: Shape::Everything,
            });
        }

        let (method, path) = if raw.starts_with('/') {
            (None, raw)
        } else {
            let Some((method, path)) = raw.split_once(' ') else {
                return Err(
                    "must be `*`, a path starting with `/`, or a method, one space and a path \
                     starting with `/`"
                        .into(),
                );
            };
            (Some(parse_method(method)?), path)
        };
        if path.starts_with(' ') {
            return Err("method and path must be separated by exactly one space".into());
        }
        if path == Self::EVERYTHING {
            return Err(
                "`*` alone matches every endpoint and takes no method; use `METHOD /**` for every \
                 path of one method"
                    .into(),
            );
        }
        if !path.starts_with('/') {
            return Err(format!("path pattern must start with `/`, got {path:?}"));
        }
        let segments = parse_path(path)?;

        let mut canonical = String::with_capacity(raw.len());
        if let Some(method) = &method {
            canonical.push_str(method);
            canonical.push(' ');
        }
        if segments.is_empty() {
            canonical.push('/');
        }
        for segment in &segments {
            canonical.push('/');
            canonical.push_str(match segment {
                Segment::Literal(literal) => literal,
                Segment::One => "*",
                Segment::Rest => "**",
            });
        }
        Ok(Self {
            canonical: canonical.into(),
            method: method.map(String::into_boxed_str),
            shape: Shape::Path(segments.into()),
        })
    }

    /// Whether a request with this method (if any) and path matches. `path` may carry a query
    /// string or fragment; they are ignored. Does not allocate.
    pub fn matches(&self, method: Option<&str>, path: &str) -> bool {
        self.matches_bare_path(method, strip_query(path))
    }

    /// [`Self::matches`] for a path already cut at `?`/`#`.
    fn matches_bare_path(&self, method: Option<&str>, path: &str) -> bool {
        if let Some(own) = &self.method {
            match method {
                Some(method) if method.eq_ignore_ascii_case(own) => {}
                _ => return false,
            }
        }
        let segments = match &self.shape {
            Shape::Everything => return true,
            Shape::Path(segments) => segments,
        };
        let mut request = path.split('/').filter(|s| !s.is_empty());
        for segment in segments.iter() {
            match segment {
                Segment::Rest => return true,
                Segment::One => {
                    if request.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if request.next() != Some(&**literal) {
                        return false;
                    }
                }
            }
        }
        request.next().is_none()
    }

    /// How specific this pattern is; greater is more specific (see the module doc).
    pub fn specificity(&self) -> Specificity {
        let (matches_everything, segments) = match &self.shape {
            Shape::Everything => (true, Vec::new()),
            Shape::Path(segments) => (
                false,
                segments
                    .iter()
                    .map(|segment| match segment {
                        Segment::Literal(_) => SegmentRank::Literal,
                        Segment::One => SegmentRank::One,
                        Segment::Rest => SegmentRank::Rest,
                    })
                    .collect(),
            ),
        };
        Specificity {
            matches_everything,
            has_method: self.method.is_some(),
            segments: segments.into(),
            canonical: self.canonical.clone(),
        }
    }

    /// The canonical form (uppercase method, single slashes, no trailing slash).
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The method this pattern requires, uppercase; `None` when any method matches.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }
}

fn parse_method(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > MAX_METHOD_LEN || !raw.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Err(format!(
            "method must be 1–{MAX_METHOD_LEN} ASCII letters, got {raw:?}"
        ));
    }
    Ok(raw.to_ascii_uppercase())
}

/// Parses a path pattern that starts with `/` into its non-empty segments.
fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    if let Some(bad) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "path pattern must not contain whitespace or control characters; found {bad:?}"
        ));
    }
    if path.contains('?') {
        return Err("path pattern must not contain `?`: matching ignores the query string".into());
    }
    if path.contains('#') {
        return Err("path pattern must not contain `#`: matching ignores the fragment".into());
    }
    let raw_segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = raw_segments.len().saturating_sub(1);
    raw_segments
        .iter()
        .enumerate()
        .map(|(i, raw)| match *raw {
            "*" => Ok(Segment::One),
            "**" if i == last => Ok(Segment::Rest),
            "**" => Err("`**` may only be the last segment".to_owned()),
            literal if literal.contains('*') => Err(format!(
                "`*` and `**` must be whole segments, got {literal:?}"
            )),
            literal => Ok(Segment::Literal(literal.into())),
        })
        .collect()
}

/// The part of a request path that matching looks at: everything before `?` or `#`.
fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(end) => &path[..end],
        None => path,
    }
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl FromStr for EndpointPattern {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

impl PartialEq for EndpointPattern {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for EndpointPattern {}

impl std::hash::Hash for EndpointPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.canonical.hash(state);
    }
}

/// How specific an [`EndpointPattern`] is. `Ord` is total and **greater means more specific**;
/// the module doc gives the rules. Equal only for equal patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Specificity {
    matches_everything: bool,
    has_method: bool,
    segments: Box<[SegmentRank]>,
    canonical: Box<str>,
}

/// Declared least specific first, so the derived `Ord` is literal > `*` > `**`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SegmentRank {
    Rest,
    One,
    Literal,
}

impl Ord for Specificity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .matches_everything
            .cmp(&self.matches_everything)
            .then(self.has_method.cmp(&other.has_method))
            .then_with(|| compare_segments(&self.segments, &other.segments))
            .then_with(|| other.canonical.cmp(&self.canonical))
    }
}

/// Segment by segment, literal > `*` > `**`; then the longer wins, except over an exact end
/// where the longer only adds a final `**`.
fn compare_segments(ours: &[SegmentRank], theirs: &[SegmentRank]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let common = ours.len().min(theirs.len());
    match ours[..common].cmp(&theirs[..common]) {
        Ordering::Equal => {}
        decided => return decided,
    }
    match (&ours[common..], &theirs[common..]) {
        ([SegmentRank::Rest], []) => Ordering::Less,
        ([], [SegmentRank::Rest]) => Ordering::Greater,
        _ => ours.len().cmp(&theirs.len()),
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Patterns compiled for lookup: the most specific matching entry wins.
///
/// Entries are kept sorted by descending [`Specificity`], so the first match is the winner.
/// Lookups do not allocate, lock or await. If two entries have the same pattern (the store never
/// produces that), the one given first wins.
#[derive(Clone, Debug)]
pub struct PatternSet<T> {
    entries: Box<[(EndpointPattern, T)]>,
}

impl<T> PatternSet<T> {
    /// Compiles `entries`; their order does not matter.
    pub fn new(entries: Vec<(EndpointPattern, T)>) -> Self {
        let mut keyed: Vec<(Specificity, (EndpointPattern, T))> = entries
            .into_iter()
            .map(|entry| (entry.0.specificity(), entry))
            .collect();
        // Stable, so among duplicate patterns the first given stays first.
        keyed.sort_by(|a, b| b.0.cmp(&a.0));
        Self {
            entries: keyed.into_iter().map(|(_, entry)| entry).collect(),
        }
    }

    /// The value of the most specific pattern matching this request, if any. `path` may carry a
    /// query string or fragment; they are ignored.
    pub fn find(&self, method: Option<&str>, path: &str) -> Option<&T> {
        let path = strip_query(path);
        self.entries
            .iter()
            .find(|(pattern, _)| pattern.matches_bare_path(method, path))
            .map(|(_, value)| value)
    }

    /// The entries, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = (&EndpointPattern, &T)> {
        self.entries.iter().map(|(pattern, value)| (pattern, value))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<T> Default for PatternSet<T> {
    fn default() -> Self {
        Self {
            entries: Box::new([]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(raw: &str) -> EndpointPattern {
        EndpointPattern::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    #[test]
    fn parse_accepts_valid_patterns_in_canonical_form() {
        let cases = [
            ("*", "*"),
            ("/", "/"),
            ("//", "/"),
            ("/a", "/a"),
            ("/a/", "/a"),
            ("//a//b///", "/a/b"),
            ("get /a/", "GET /a"),
            ("Get /", "GET /"),
            ("PROPFIND /dav/**", "PROPFIND /dav/**"),
            ("/v1/orders/*/items", "/v1/orders/*/items"),
            ("/**", "/**"),
            ("/a/**/", "/a/**"),
            ("/a/*/**", "/a/*/**"),
            ("/caf%C3%A9/é/a.b-c_d~e:f@g", "/caf%C3%A9/é/a.b-c_d~e:f@g"),
            ("ABCDEFGHIJKLMNOPQRST /", "ABCDEFGHIJKLMNOPQRST /"),
        ];
        for (raw, canonical) in cases {
            let parsed = pattern(raw);
            assert_eq!(parsed.as_str(), canonical, "{raw:?}");
            assert_eq!(parsed.to_string(), canonical, "{raw:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATTERN_LEN - 1));
        assert_eq!(pattern(&long).as_str(), long);
    }

    #[test]
    fn parse_rejects_invalid_patterns_naming_the_problem() {
        let too_long = format!("/{}", "a".repeat(MAX_PATTERN_LEN));
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            (&too_long, "at most 1024 bytes, got 1025"),
            (" /a", "must not start or end with whitespace"),
            ("/a ", "must not start or end with whitespace"),
            ("a", "must be `*`, a path starting with `/`"),
            ("GET", "must be `*`, a path starting with `/`"),
            ("**", "must be `*`, a path starting with `/`"),
            ("GET\t/a", "must be `*`, a path starting with `/`"),
            ("G3T /a", "method must be 1–20 ASCII letters, got \"G3T\""),
            ("M-SEARCH /", "method must be 1–20 ASCII letters"),
            (
                "ABCDEFGHIJKLMNOPQRSTU /",
                "method must be 1–20 ASCII letters",
            ),
            ("GÉT /", "method must be 1–20 ASCII letters"),
            ("GET  /a", "separated by exactly one space"),
            (
                "GET *",
                "`*` alone matches every endpoint and takes no method",
            ),
            ("GET a/b", "path pattern must start with `/`, got \"a/b\""),
            ("GET /a b", "whitespace or control characters; found ' '"),
            ("/a\u{7f}", "whitespace or control characters"),
            ("/a?b=1", "must not contain `?`"),
            ("/a#top", "must not contain `#`"),
            ("/a*b", "`*` and `**` must be whole segments, got \"a*b\""),
            ("/a/***", "`*` and `**` must be whole segments, got \"***\""),
            ("/*a", "must be whole segments"),
            ("/**/a", "`**` may only be the last segment"),
            ("/a/**/**", "`**` may only be the last segment"),
        ];
        for (raw, expected) in cases {
            let err = EndpointPattern::parse(raw).unwrap_err();
            assert!(err.contains(expected), "{raw:?}: got {err:?}");
        }
    }

    #[test]
    fn equal_canonical_forms_are_the_same_pattern() {
        assert_eq!(pattern("get /a/"), pattern("GET /a"));
        assert_eq!(pattern("//a//b"), pattern("/a/b"));
        assert_ne!(pattern("/a"), pattern("GET /a"));
        assert_ne!(pattern("/**"), pattern("*"));
        assert_eq!("GET /a".parse::<EndpointPattern>(), Ok(pattern("get /a")));
        assert_eq!(pattern("get /a").method(), Some("GET"));
    }

    #[test]
    fn matches_requests_as_specified() {
        // (pattern, request method, request path, expected)
        let cases: &[(&str, Option<&str>, &str, bool)] = &[
            ("*", None, "/", true),
            ("*", Some("DELETE"), "/any/thing?x=1", true),
            ("*", None, "", true),
            ("/", None, "/", true),
            ("/", None, "", true),
            ("/", None, "//?x", true),
            ("/", None, "/a", false),
            ("/a/b", None, "/a/b", true),
            ("/a/b", None, "/a/b/", true),
            ("/a/b", None, "//a///b//", true),
            ("/a/b", None, "/a/b?c=/d", true),
            ("/a/b", None, "/a/b#frag/x", true),
            ("/a/b", None, "/a/b/c", false),
            ("/a/b", None, "/a", false),
            ("/a/b", None, "/A/b", false),
            ("/a/b", None, "/a/b%2F", false),
            ("/a/*", None, "/a/x", true),
            ("/a/*", None, "/a/x/y", false),
            ("/a/*", None, "/a", false),
            ("/a/*", None, "/a/", false),
            ("/a/*/c", None, "/a/xyz/c", true),
            ("/**", None, "/", true),
            ("/**", None, "/x/y/z", true),
            ("/a/**", None, "/a", true),
            ("/a/**", None, "/a/", true),
            ("/a/**", None, "/a/b/c/d", true),
            ("/a/**", None, "/ab", false),
            ("/a/**", None, "/b/a", false),
            ("/a/*/**", None, "/a", false),
            ("/a/*/**", None, "/a/b", true),
            ("GET /a", Some("GET"), "/a", true),
            ("get /a", Some("Get"), "/a", true),
            ("GET /a", Some("get"), "/a?x", true),
            ("GET /a", Some("POST"), "/a", false),
            ("GET /a", Some("GETX"), "/a", false),
            ("GET /a", None, "/a", false),
            ("GET /a", Some(""), "/a", false),
            ("/a", Some("PATCH"), "/a", true),
            ("/a", None, "/a", true),
        ];
        for &(raw, method, path, expected) in cases {
            assert_eq!(
                pattern(raw).matches(method, path),
                expected,
                "{raw:?} vs {method:?} {path:?}"
            );
        }
    }

    #[test]
    fn specificity_orders_patterns_as_specified() {
        // Each pair: (more specific, less specific).
        let cases = [
            ("GET /**", "/a/b"),
            ("GET /a", "/a"),
            ("/a/b", "/a/*"),
            ("/a/*", "/a/**"),
            ("/a/b", "/a/**"),
            ("/a/b/c", "/a/*/c"),
            ("/a/b/**", "/a/**"),
            ("/a/b/**", "/a/*/c"),
            ("/a/b", "/a"),
            ("/a", "/a/**"), // an exact end beats a final `**` matching zero segments
            ("/a/*/b", "/a/*"), // otherwise the longer pattern wins
            ("/", "/**"),    // likewise on the root path
            ("/**", "*"),
            ("/", "*"),
            ("GET /**", "*"),
            ("/a/x", "/a/y"), // tie broken by canonical string
            ("GET /a", "POST /a"),
        ];
        for (more, less) in cases {
            let (more_s, less_s) = (pattern(more).specificity(), pattern(less).specificity());
            assert!(more_s > less_s, "{more:?} should beat {less:?}");
            assert!(less_s < more_s, "{less:?} should lose to {more:?}");
        }
        assert_eq!(
            pattern("get /a/").specificity(),
            pattern("GET /a").specificity()
        );
    }

    #[test]
    fn pattern_set_picks_the_most_specific_match() {
        let set = PatternSet::new(
            [
                "*",
                "/**",
                "/api/**",
                "/api/*/orders",
                "/api/v1/orders",
                "POST /api/**",
            ]
            .into_iter()
            .map(|raw| (pattern(raw), raw))
            .collect(),
        );
        let cases: &[(Option<&str>, &str, &str)] = &[
            (None, "/api/v1/orders?page=2", "/api/v1/orders"),
            (None, "/api/v2/orders", "/api/*/orders"),
            (None, "/api/v2/users", "/api/**"),
            (Some("post"), "/api/v1/orders", "POST /api/**"),
            (Some("GET"), "/api/v1/orders", "/api/v1/orders"),
            (None, "/other", "/**"),
            (None, "", "/**"),
        ];
        for &(method, path, expected) in cases {
            assert_eq!(
                set.find(method, path),
                Some(&expected),
                "{method:?} {path:?}"
            );
        }
        assert_eq!(set.len(), 6);
        assert!(!set.is_empty());
        assert_eq!(
            set.iter().next().map(|(p, _)| p.as_str()),
            Some("POST /api/**")
        );

        let empty: PatternSet<()> = PatternSet::default();
        assert!(empty.is_empty());
        assert_eq!(empty.find(None, "/"), None);
        let no_match = PatternSet::new(vec![(pattern("GET /a"), 1)]);
        assert_eq!(no_match.find(None, "/a"), None);
        assert_eq!(no_match.find(Some("GET"), "/b"), None);
    }

    /// Raw pattern text over a small alphabet, with messy slashes and method case, so that random
    /// sets overlap and random paths match often.
    fn raw_pattern() -> impl Strategy<Value = String> {
        let method = prop::option::of(prop::sample::select(vec!["GET", "get", "POST", "Put"]));
        let segment = prop::sample::select(vec!["a", "b", "*"]);
        let path = (
            prop::collection::vec(segment, 0..4),
            any::<bool>(),
            prop::sample::select(vec!["/", "//"]),
            any::<bool>(),
        )
            .prop_map(|(segments, rest, separator, trailing_slash)| {
                let mut path = String::new();
                for segment in segments {
                    path.push_str(separator);
                    path.push_str(segment);
                }
                if rest {
                    path.push_str("/**");
                }
                if path.is_empty() || trailing_slash {
                    path.push('/');
                }
                path
            });
        prop_oneof![
            1 => Just("*".to_owned()),
            12 => (method, path).prop_map(|(method, path)| match method {
                Some(method) => format!("{method} {path}"),
                None => path,
            }),
        ]
    }

    fn request() -> impl Strategy<Value = (Option<String>, String)> {
        let method = prop::option::of(prop::sample::select(vec!["GET", "post", "PUT", "DELETE"]));
        let path = (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", ""]), 0..5),
            prop::sample::select(vec!["", "/", "?a/b", "#b"]),
        )
            .prop_map(|(segments, suffix)| {
                let mut path = String::new();
                for segment in segments {
                    path.push('/');
                    path.push_str(segment);
                }
                path.push_str(suffix);
                path
            });
        (method.prop_map(|m| m.map(str::to_owned)), path)
    }

    proptest! {
        #[test]
        fn find_returns_the_most_specific_matching_pattern(
            raws in prop::collection::vec(raw_pattern(), 0..12),
            requests in prop::collection::vec(request(), 1..20),
        ) {
            let mut patterns: Vec<EndpointPattern> = Vec::new();
            for raw in &raws {
                let parsed = EndpointPattern::parse(raw).map_err(TestCaseError::fail)?;
                if !patterns.contains(&parsed) {
                    patterns.push(parsed);
                }
            }
            let set = PatternSet::new(patterns.iter().cloned().map(|p| (p.clone(), p)).collect());
            let reversed =
                PatternSet::new(patterns.iter().rev().cloned().map(|p| (p.clone(), p)).collect());
            prop_assert_eq!(set.len(), patterns.len());
            for (method, path) in &requests {
                let method = method.as_deref();
                let expected = patterns
                    .iter()
                    .filter(|p| p.matches(method, path))
                    .max_by_key(|p| p.specificity());
                prop_assert_eq!(set.find(method, path), expected, "{:?} {:?}", method, path);
                prop_assert_eq!(reversed.find(method, path), expected);
            }
        }

        #[test]
        fn parsing_the_canonical_form_gives_the_same_pattern(raw in raw_pattern()) {
            let parsed = EndpointPattern::parse(&raw).map_err(TestCaseError::fail)?;
            let reparsed = EndpointPattern::parse(&parsed.to_string())
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(reparsed.as_str(), parsed.as_str());
            prop_assert_eq!(reparsed.specificity(), parsed.specificity());
            prop_assert_eq!(&reparsed, &parsed);
        }

        #[test]
        fn specificity_is_equal_only_for_equal_patterns(a in raw_pattern(), b in raw_pattern()) {
            let (a, b) = (
                EndpointPattern::parse(&a).map_err(TestCaseError::fail)?,
                EndpointPattern::parse(&b).map_err(TestCaseError::fail)?,
            );
            prop_assert_eq!(a.specificity() == b.specificity(), a == b);
        }
    }
}
