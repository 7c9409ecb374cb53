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
//!
//! # Lookup
//! [`PatternSet`] indexes patterns in a segment trie, one per method plus one for patterns
//! without a method: each node has its literal children in a hash map, a `*` child, and the
//! patterns that end there (exactly, or with `**`). A lookup walks the request path through the
//! method's trie first (any method pattern beats every pattern without one), trying at each
//! level the literal child, then `*`, then a `**` ending there — the order of rule 3 — so the
//! first match it finds is the most specific one, and its cost does not grow with the number of
//! patterns. The tests keep the obvious implementation (try every pattern, most specific first)
//! as the oracle the index must agree with.

use std::{
    cmp::Ordering,
    fmt,
    hash::{BuildHasher, RandomState},
    str::FromStr,
    sync::Arc,
};

use hashbrown::HashTable;

/// The longest endpoint pattern Sluice accepts, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// The longest HTTP method a pattern may name.
pub const MAX_METHOD_LEN: usize = 20;

/// A parsed endpoint pattern such as `GET /v1/orders/*` or `/static/**`. Built only by
/// [`EndpointPattern::parse`]; see the module doc for the grammar and matching rules.
///
/// Cloning is a reference-count increment: the snapshot holds each pattern in its policy and in
/// its [`PatternSet`], and 100,000 policies must not mean 200,000 copies.
#[derive(Clone, Debug)]
pub struct EndpointPattern(Arc<Parsed>);

#[derive(Debug)]
struct Parsed {
    /// The canonical form: what `Display` prints, what equality and hashing use. The method and
    /// the literal segments are slices of it, so a pattern is two allocations besides the `Arc`.
    canonical: Box<str>,
    /// Length of the uppercase method at the start of `canonical`; 0 when any method matches.
    method_len: u8,
    shape: Shape,
}

#[derive(Debug)]
enum Shape {
    /// `*` alone: every endpoint.
    Everything,
    /// A path pattern; [`Segment::Rest`] can only be last.
    Path(Box<[Segment]>),
}

#[derive(Clone, Copy, Debug)]
enum Segment {
    /// `canonical[start..end]` (a pattern is at most [`MAX_PATTERN_LEN`] bytes, so `u16` fits).
    Literal { start: u16, end: u16 },
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Rest,
}

/// A path pattern segment while parsing, before it has a place in the canonical string.
enum RawSegment<'a> {
    Literal(&'a str),
    One,
    Rest,
}

impl Segment {
    fn rank(self) -> SegmentRank {
        match self {
            Segment::Literal { .. } => SegmentRank::Literal,
            Segment::One => SegmentRank::One,
            Segment::Rest => SegmentRank::Rest,
        }
    }
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
            return Ok(Self(Arc::new(Parsed {
                canonical: Self::EVERYTHING.into(),
                method_len: 0,
                shape: Shape::Everything,
            })));
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
        let raw_segments = parse_path(path)?;

        let mut canonical = String::with_capacity(raw.len());
        if let Some(method) = &method {
            canonical.push_str(method);
            canonical.push(' ');
        }
        if raw_segments.is_empty() {
            canonical.push('/');
        }
        let mut segments = Vec::with_capacity(raw_segments.len());
        for segment in raw_segments {
            canonical.push('/');
            segments.push(match segment {
                RawSegment::Literal(literal) => {
                    // Both fit: the canonical form is never longer than `raw`.
                    let start = canonical.len() as u16;
                    canonical.push_str(literal);
                    Segment::Literal {
                        start,
                        end: canonical.len() as u16,
                    }
                }
                RawSegment::One => {
                    canonical.push('*');
                    Segment::One
                }
                RawSegment::Rest => {
                    canonical.push_str("**");
                    Segment::Rest
                }
            });
        }
        Ok(Self(Arc::new(Parsed {
            canonical: canonical.into(),
            method_len: method.map_or(0, |m| m.len() as u8),
            shape: Shape::Path(segments.into()),
        })))
    }

    /// Whether a request with this method (if any) and path matches. `path` may carry a query
    /// string or fragment; they are ignored. Does not allocate.
    pub fn matches(&self, method: Option<&str>, path: &str) -> bool {
        self.matches_bare_path(method, strip_query(path))
    }

    /// [`Self::matches`] for a path already cut at `?`/`#`.
    fn matches_bare_path(&self, method: Option<&str>, path: &str) -> bool {
        if let Some(own) = self.method() {
            match method {
                Some(method) if method.eq_ignore_ascii_case(own) => {}
                _ => return false,
            }
        }
        let segments = match &self.0.shape {
            Shape::Everything => return true,
            Shape::Path(segments) => segments,
        };
        let mut request = path.split('/').filter(|s| !s.is_empty());
        for segment in segments.iter() {
            match *segment {
                Segment::Rest => return true,
                Segment::One => {
                    if request.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal { .. } => {
                    if request.next() != Some(self.literal(*segment)) {
                        return false;
                    }
                }
            }
        }
        request.next().is_none()
    }

    /// How specific this pattern is; greater is more specific (see the module doc).
    pub fn specificity(&self) -> Specificity {
        Specificity(self.clone())
    }

    /// The canonical form (uppercase method, single slashes, no trailing slash).
    pub fn as_str(&self) -> &str {
        &self.0.canonical
    }

    /// The method this pattern requires, uppercase; `None` when any method matches.
    pub fn method(&self) -> Option<&str> {
        let len = usize::from(self.0.method_len);
        (len > 0).then(|| &self.0.canonical[..len])
    }

    fn segments(&self) -> &[Segment] {
        match &self.0.shape {
            Shape::Everything => &[],
            Shape::Path(segments) => segments,
        }
    }

    /// The text of a [`Segment::Literal`] of this pattern; empty for the wildcards.
    fn literal(&self, segment: Segment) -> &str {
        match segment {
            Segment::Literal { start, end } => {
                &self.0.canonical[usize::from(start)..usize::from(end)]
            }
            Segment::One | Segment::Rest => "",
        }
    }

    fn matches_everything(&self) -> bool {
        matches!(self.0.shape, Shape::Everything)
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
fn parse_path(path: &str) -> Result<Vec<RawSegment<'_>>, String> {
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
            "*" => Ok(RawSegment::One),
            "**" if i == last => Ok(RawSegment::Rest),
            "**" => Err("`**` may only be the last segment".to_owned()),
            literal if literal.contains('*') => Err(format!(
                "`*` and `**` must be whole segments, got {literal:?}"
            )),
            literal => Ok(RawSegment::Literal(literal)),
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

/// The first non-empty segment of `path` and what follows it; `None` when only slashes are left.
fn next_segment(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return None;
    }
    Some(match path.find('/') {
        Some(end) => (&path[..end], &path[end..]),
        None => (path, ""),
    })
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
        self.as_str() == other.as_str()
    }
}

impl Eq for EndpointPattern {}

impl std::hash::Hash for EndpointPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// How specific an [`EndpointPattern`] is. `Ord` is total and **greater means more specific**;
/// the module doc gives the rules. Equal only for equal patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Specificity(EndpointPattern);

/// Declared least specific first, so the derived `Ord` is literal > `*` > `**`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SegmentRank {
    Rest,
    One,
    Literal,
}

impl Ord for Specificity {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_specificity(&self.0, &other.0)
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The specificity order of the module doc; `Greater` means `ours` is more specific.
fn compare_specificity(ours: &EndpointPattern, theirs: &EndpointPattern) -> Ordering {
    theirs
        .matches_everything()
        .cmp(&ours.matches_everything())
        .then(ours.method().is_some().cmp(&theirs.method().is_some()))
        .then_with(|| compare_segments(ours.segments(), theirs.segments()))
        .then_with(|| theirs.as_str().cmp(ours.as_str()))
}

/// Segment by segment, literal > `*` > `**`; then the longer wins, except over an exact end
/// where the longer only adds a final `**`.
fn compare_segments(ours: &[Segment], theirs: &[Segment]) -> Ordering {
    let common = ours.len().min(theirs.len());
    let ours_ranks = ours[..common].iter().map(|s| s.rank());
    match ours_ranks.cmp(theirs[..common].iter().map(|s| s.rank())) {
        Ordering::Equal => {}
        decided => return decided,
    }
    match (&ours[common..], &theirs[common..]) {
        ([Segment::Rest], []) => Ordering::Less,
        ([], [Segment::Rest]) => Ordering::Greater,
        _ => ours.len().cmp(&theirs.len()),
    }
}

/// Patterns compiled for lookup: the most specific matching entry wins.
///
/// Entries are kept sorted by descending [`Specificity`] (so [`PatternSet::iter`] gives the most
/// specific first), and a segment trie indexes them, so a lookup walks the request path once
/// instead of trying every pattern: its cost follows the path's length and the branches the
/// patterns share with it, not the number of patterns. Lookups do not allocate, lock or await.
/// If two entries have the same pattern (the store never produces that), the one given first
/// wins.
#[derive(Clone, Debug)]
pub struct PatternSet<T> {
    entries: Box<[(EndpointPattern, T)]>,
    index: Index,
}

/// The segment trie, flat: nodes in one vector, every literal edge of every node in one hash
/// table whose keys are not copies but point into the patterns' own canonical strings. A
/// pattern costs the trie a few dozen bytes, which matters with 100,000 policies in memory.
#[derive(Clone, Debug)]
struct Index {
    /// [`METHODS`] is the root of the tries of patterns with a method: its literal edges are
    /// the (uppercase) methods. [`ANY_METHOD`] is the root of the trie of patterns without one.
    nodes: Vec<Node>,
    edges: HashTable<Edge>,
    hasher: RandomState,
    /// The pattern `*`, least specific of all.
    everything: Option<u32>,
}

const METHODS: u32 = 0;
const ANY_METHOD: u32 = 1;
/// An absent node or pattern position.
const NONE: u32 = u32::MAX;

/// One trie node: the patterns whose segments so far spell the path from its root. Pattern
/// positions (in the sorted entries, so smaller is more specific) and node numbers, or [`NONE`].
#[derive(Clone, Copy, Debug)]
struct Node {
    /// The child for `*`.
    one: u32,
    /// The pattern that ends here with `**`.
    rest: u32,
    /// The pattern that ends here.
    end: u32,
}

impl Node {
    const EMPTY: Self = Self {
        one: NONE,
        rest: NONE,
        end: NONE,
    };
}

/// A literal edge `parent → child`. Its text is segment `segment` of the pattern at position
/// `pattern` (the one that created the edge), or that pattern's method for [`Edge::METHOD`].
#[derive(Clone, Copy, Debug)]
struct Edge {
    parent: u32,
    child: u32,
    pattern: u32,
    segment: u16,
}

impl Edge {
    const METHOD: u16 = u16::MAX;
}

/// The first defined position, as an `Option`.
fn position(candidates: [u32; 2]) -> Option<u32> {
    candidates.into_iter().find(|&p| p != NONE)
}

impl<T> PatternSet<T> {
    /// Compiles `entries`; their order does not matter.
    pub fn new(mut entries: Vec<(EndpointPattern, T)>) -> Self {
        // Stable, so among duplicate patterns the first given stays first.
        entries.sort_by(|a, b| compare_specificity(&b.0, &a.0));
        let mut set = Self {
            entries: entries.into(),
            index: Index {
                nodes: vec![Node::EMPTY; 2],
                edges: HashTable::new(),
                hasher: RandomState::new(),
                everything: None,
            },
        };
        for position in 0..set.entries.len() {
            set.insert(u32::try_from(position).expect("fewer than 2^32 patterns"));
        }
        set.index.nodes.shrink_to_fit();
        let (index, entries) = (&mut set.index, &set.entries);
        let hasher = &index.hasher;
        index
            .edges
            .shrink_to_fit(|edge| edge_hash(hasher, edge, entries));
        set
    }

    /// Adds the pattern at `position` to the trie (more specific positions first).
    fn insert(&mut self, position: u32) {
        let pattern = &self.entries[position as usize].0;
        let index = &mut self.index;
        if pattern.matches_everything() {
            index.everything.get_or_insert(position);
            return;
        }
        let mut node = match pattern.method() {
            Some(_) => index.literal_child(METHODS, position, Edge::METHOD, &self.entries),
            None => ANY_METHOD,
        };
        for (i, &segment) in pattern.segments().iter().enumerate() {
            node = match segment {
                Segment::Literal { .. } => {
                    let i = u16::try_from(i).expect("at most 1024 bytes, so fewer segments");
                    index.literal_child(node, position, i, &self.entries)
                }
                Segment::One => match index.nodes[node as usize].one {
                    NONE => {
                        let child = index.new_node();
                        index.nodes[node as usize].one = child;
                        child
                    }
                    child => child,
                },
                Segment::Rest => {
                    // `**` is always last; the first (most specific) duplicate keeps its place.
                    let rest = &mut index.nodes[node as usize].rest;
                    if *rest == NONE {
                        *rest = position;
                    }
                    return;
                }
            };
        }
        let end = &mut index.nodes[node as usize].end;
        if *end == NONE {
            *end = position;
        }
    }

    /// The value of the most specific pattern matching this request, if any. `path` may carry a
    /// query string or fragment; they are ignored.
    pub fn find(&self, method: Option<&str>, path: &str) -> Option<&T> {
        let path = strip_query(path);
        let by_method = method.and_then(|method| {
            let mut upper = [0u8; MAX_METHOD_LEN];
            let upper = upper.get_mut(..method.len())?;
            upper.copy_from_slice(method.as_bytes());
            upper.make_ascii_uppercase();
            // Uppercasing ASCII bytes keeps UTF-8 valid, so this never fails.
            let upper = std::str::from_utf8(upper).ok()?;
            self.index.child(METHODS, upper, &self.entries)
        });
        by_method
            .and_then(|root| self.find_from(root, path))
            .or_else(|| self.find_from(ANY_METHOD, path))
            .or(self.index.everything)
            .map(|position| &self.entries[position as usize].1)
    }

    /// Depth-first in specificity order: where the path goes on, a literal child beats `*`,
    /// which beats a `**` ending here; where it ends, an exact end beats `**` (`/a` over
    /// `/a/**`). So the first match found is the winner. Each node is visited at most once.
    fn find_from(&self, node: u32, path: &str) -> Option<u32> {
        let here = self.index.nodes[node as usize];
        let Some((segment, after)) = next_segment(path) else {
            return position([here.end, here.rest]);
        };
        self.index
            .child(node, segment, &self.entries)
            .and_then(|child| self.find_from(child, after))
            .or_else(|| match here.one {
                NONE => None,
                child => self.find_from(child, after),
            })
            .or(position([here.rest, NONE]))
    }

    /// The value of the pattern `*` ([`EndpointPattern::EVERYTHING`]), if the set has it.
    pub fn find_everything(&self) -> Option<&T> {
        self.index
            .everything
            .map(|position| &self.entries[position as usize].1)
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

impl Index {
    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node::EMPTY);
        u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 nodes")
    }

    /// The text an edge stands for.
    fn edge_text<'e, T>(edge: &Edge, entries: &'e [(EndpointPattern, T)]) -> &'e str {
        let pattern = &entries[edge.pattern as usize].0;
        match edge.segment {
            Edge::METHOD => pattern.method().unwrap_or_default(),
            i => pattern.literal(pattern.segments()[usize::from(i)]),
        }
    }

    fn hash(&self, parent: u32, text: &str) -> u64 {
        self.hasher.hash_one((parent, text))
    }

    /// The child of `parent` along the literal `text`.
    fn child<T>(&self, parent: u32, text: &str, entries: &[(EndpointPattern, T)]) -> Option<u32> {
        self.edges
            .find(self.hash(parent, text), |edge| {
                edge.parent == parent && Self::edge_text(edge, entries) == text
            })
            .map(|edge| edge.child)
    }

    /// The child of `parent` along segment `segment` of the pattern at `pattern` (or its
    /// method), added when missing.
    fn literal_child<T>(
        &mut self,
        parent: u32,
        pattern: u32,
        segment: u16,
        entries: &[(EndpointPattern, T)],
    ) -> u32 {
        let key = Edge {
            parent,
            child: NONE,
            pattern,
            segment,
        };
        let text = Self::edge_text(&key, entries);
        if let Some(child) = self.child(parent, text, entries) {
            return child;
        }
        let child = self.new_node();
        let hash = self.hash(parent, text);
        let hasher = &self.hasher;
        self.edges
            .insert_unique(hash, Edge { child, ..key }, |edge| {
                edge_hash(hasher, edge, entries)
            });
        child
    }
}

/// An edge's hash, when the table grows or shrinks.
fn edge_hash<T>(hasher: &RandomState, edge: &Edge, entries: &[(EndpointPattern, T)]) -> u64 {
    hasher.hash_one((edge.parent, Index::edge_text(edge, entries)))
}

impl<T> Default for PatternSet<T> {
    fn default() -> Self {
        Self::new(Vec::new())
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

    /// The implementation the index replaced, kept as its oracle: every pattern sorted most
    /// specific first (by `Specificity`, not by the index's own comparison), the first match wins.
    struct LinearPatternSet<T> {
        entries: Vec<(EndpointPattern, T)>,
    }

    impl<T> LinearPatternSet<T> {
        fn new(entries: Vec<(EndpointPattern, T)>) -> Self {
            let mut keyed: Vec<(Specificity, (EndpointPattern, T))> = entries
                .into_iter()
                .map(|entry| (entry.0.specificity(), entry))
                .collect();
            keyed.sort_by(|a, b| b.0.cmp(&a.0));
            Self {
                entries: keyed.into_iter().map(|(_, entry)| entry).collect(),
            }
        }

        fn find(&self, method: Option<&str>, path: &str) -> Option<&T> {
            self.entries
                .iter()
                .find(|(pattern, _)| pattern.matches(method, path))
                .map(|(_, value)| value)
        }
    }

    #[test]
    fn the_index_handles_what_a_trie_gets_wrong_easily() {
        // Each case: patterns, request, expected winner. Backtracking out of a literal branch
        // that dead-ends, `**` at the root and as the fallback after a failed `*`, the exact end
        // over `**`, methods compared case-insensitively and never matched by a longer or empty
        // request method, duplicates keeping the first.
        /// (patterns, request method, request path, expected winner)
        type Case<'a> = (&'a [&'a str], Option<&'a str>, &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            (&["/a/b/c", "/a/*/d"], None, "/a/b/d", Some("/a/*/d")),
            (&["/a/b/c", "/a/**"], None, "/a/b/d", Some("/a/**")),
            (&["/a/*/c", "/**"], None, "/a/b/d", Some("/**")),
            (&["/a", "/a/**"], None, "/a/", Some("/a")),
            (&["/a/**", "/a/*"], None, "/a", Some("/a/**")),
            (&["/", "/**"], None, "//", Some("/")),
            (&["/**", "*"], None, "", Some("/**")),
            (&["*"], Some("GET"), "/x", Some("*")),
            (&["get /a", "/a/b"], Some("gEt"), "/a", Some("GET /a")),
            (&["GET /**", "/a"], Some("GET"), "/a", Some("GET /**")),
            (&["GET /b", "/a"], Some("GET"), "/a", Some("/a")),
            (&["GET /a"], Some("GETGETGETGETGETGETGETGET"), "/a", None),
            (&["GET /a"], Some(""), "/a", None),
            (&["GET /a"], Some("gét"), "/a", None),
            (&["/a/b", "/a/b"], None, "/a/b", Some("/a/b")),
        ];
        for &(patterns, method, path, expected) in cases {
            let set = PatternSet::new(
                patterns
                    .iter()
                    .enumerate()
                    .map(|(i, raw)| (pattern(raw), (i, pattern(raw).to_string())))
                    .collect(),
            );
            let found = set.find(method, path);
            assert_eq!(
                found.map(|(_, p)| p.as_str()),
                expected,
                "{patterns:?} {method:?} {path:?}"
            );
            if let [first, second] = patterns
                && pattern(first) == pattern(second)
            {
                assert_eq!(found.map(|(i, _)| *i), Some(0), "the first duplicate wins");
            }
        }
    }

    #[test]
    fn find_everything_is_the_star_pattern_only() {
        let with_star = PatternSet::new(vec![(pattern("/**"), 1), (pattern("*"), 2)]);
        assert_eq!(with_star.find_everything(), Some(&2));
        let without = PatternSet::new(vec![(pattern("/**"), 1), (pattern("GET /**"), 3)]);
        assert_eq!(without.find_everything(), None);
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
        fn the_index_picks_what_trying_every_pattern_picks(
            raws in prop::collection::vec(raw_pattern(), 0..40),
            requests in prop::collection::vec(request(), 1..30),
        ) {
            // Duplicates are kept on purpose: both must pick the first one given.
            let entries: Vec<(EndpointPattern, usize)> = raws
                .iter()
                .enumerate()
                .map(|(i, raw)| EndpointPattern::parse(raw).map(|p| (p, i)))
                .collect::<Result<_, _>>()
                .map_err(TestCaseError::fail)?;
            let index = PatternSet::new(entries.clone());
            let oracle = LinearPatternSet::new(entries);
            for (method, path) in &requests {
                let method = method.as_deref();
                prop_assert_eq!(
                    index.find(method, path),
                    oracle.find(method, path),
                    "{:?} {:?}", method, path
                );
            }
            let everything = oracle.entries.iter().find(|(p, _)| p.as_str() == "*").map(|(_, v)| v);
            prop_assert_eq!(index.find_everything(), everything);
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
