//! What a request asks Sluice about: [`Descriptor`]s built from the request's head by a
//! [`DescriptorBuilder`], and the request's cost ([`Cost`]).
//!
//! Sluice's convention (SPEC §3) is one descriptor per request with the entries `tenant_id`, `path`
//! and optionally `method`; [`DescriptorTemplate::sluice`] builds exactly that. A descriptor without a
//! tenant entry counts as tenant `anonymous` in Sluice, so a request that leaves its tenant out never
//! escapes a limit: the template simply omits the entry.

use std::{fmt, sync::Arc};

use http::{HeaderName, request::Parts};

/// Entry key Sluice reads the tenant from (its `SLUICE_TENANT_KEY` default).
pub const TENANT_KEY: &str = "tenant_id";
/// Entry key Sluice reads the path from (`SLUICE_PATH_KEY`).
pub const PATH_KEY: &str = "path";
/// Entry key Sluice reads the HTTP method from (`SLUICE_METHOD_KEY`).
pub const METHOD_KEY: &str = "method";

/// One rate-limit descriptor: ordered `(key, value)` entries and an optional cost of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    entries: Vec<(String, String)>,
    hits_addend: Option<u32>,
}

impl Descriptor {
    /// A descriptor with no entries yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry.
    pub fn entry(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(key, value);
        self
    }

    /// Adds an entry in place.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.push((key.into(), value.into()));
    }

    /// Counts this descriptor `hits` times (Sluice's per-descriptor `hits_addend`, which overrides
    /// the request's cost; an explicit 0 checks without counting).
    pub fn hits_addend(mut self, hits: u32) -> Self {
        self.hits_addend = Some(hits);
        self
    }

    /// The entries, in order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// This descriptor's own cost, if it has one.
    pub fn cost(&self) -> Option<u32> {
        self.hits_addend
    }

    /// Whether it has no entries (such a descriptor is never sent: Sluice rejects it).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn into_parts(self) -> (Vec<(String, String)>, Option<u32>) {
        (self.entries, self.hits_addend)
    }
}

/// Builds a request's descriptors from its head (method, URI, headers, extensions). Implemented
/// by [`DescriptorTemplate`] (one descriptor), by `Vec`s and tuples of builders (several
/// descriptors per request), and by [`from_fn`] for anything else.
///
/// A request for which no builder adds a descriptor is not checked at all (a health route, say).
pub trait DescriptorBuilder: Send + Sync + 'static {
    /// Appends this request's descriptors to `out`.
    fn build(&self, request: &Parts, out: &mut Vec<Descriptor>);
}

impl<B: DescriptorBuilder> DescriptorBuilder for Vec<B> {
    fn build(&self, request: &Parts, out: &mut Vec<Descriptor>) {
        for builder in self {
            builder.build(request, out);
        }
    }
}

impl<B: DescriptorBuilder + ?Sized> DescriptorBuilder for Arc<B> {
    fn build(&self, request: &Parts, out: &mut Vec<Descriptor>) {
        (**self).build(request, out);
    }
}

macro_rules! tuple_builder {
    ($($name:ident),+) => {
        impl<$($name: DescriptorBuilder),+> DescriptorBuilder for ($($name,)+) {
            #[allow(non_snake_case)]
            fn build(&self, request: &Parts, out: &mut Vec<Descriptor>) {
                let ($($name,)+) = self;
                $($name.build(request, out);)+
            }
        }
    };
}
tuple_builder!(A, B);
tuple_builder!(A, B, C);
tuple_builder!(A, B, C, D);

/// A [`DescriptorBuilder`] from a function of the request head.
pub fn from_fn<F>(f: F) -> FnBuilder<F>
where
    F: Fn(&Parts, &mut Vec<Descriptor>) + Send + Sync + 'static,
{
    FnBuilder(f)
}

/// See [`from_fn`].
#[derive(Clone)]
pub struct FnBuilder<F>(F);

impl<F> DescriptorBuilder for FnBuilder<F>
where
    F: Fn(&Parts, &mut Vec<Descriptor>) + Send + Sync + 'static,
{
    fn build(&self, request: &Parts, out: &mut Vec<Descriptor>) {
        (self.0)(request, out);
    }
}

type ValueFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Where one entry's value comes from. An absent value (no such header, no such extension, an
/// empty header) leaves the entry out of the descriptor.
#[derive(Clone)]
pub enum EntrySource {
    /// Always this value.
    Constant(String),
    /// The request path, without the query.
    Path,
    /// The HTTP method (`GET`, `POST`, …; gRPC calls are all `POST`).
    Method,
    /// A request header. Bytes that are not UTF-8 are replaced by U+FFFD: two such values may then
    /// share a counter, which limits more, never less.
    Header(HeaderName),
    /// Any function of the request head, e.g. a claim an earlier auth layer put into the request's
    /// extensions ([`EntrySource::extension`]).
    Fn(ValueFn),
}

impl EntrySource {
    /// A value read from an extension of type `T` that an earlier layer inserted (a verified
    /// token's claims, say); absent when the request has no `T` or `read` returns `None`.
    pub fn extension<T, F>(read: F) -> Self
    where
        T: Send + Sync + 'static,
        F: Fn(&T) -> Option<String> + Send + Sync + 'static,
    {
        EntrySource::Fn(Arc::new(move |parts: &Parts| {
            parts.extensions.get::<T>().and_then(&read)
        }))
    }

    /// A value computed from the request head.
    pub fn from_fn<F>(read: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        EntrySource::Fn(Arc::new(read))
    }

    fn value(&self, request: &Parts) -> Option<String> {
        let value = match self {
            EntrySource::Constant(value) => Some(value.clone()),
            EntrySource::Path => Some(request.uri.path().to_owned()),
            EntrySource::Method => Some(request.method.as_str().to_owned()),
            EntrySource::Header(name) => request
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
            EntrySource::Fn(read) => read(request),
        };
        value.filter(|value| !value.is_empty())
    }
}

impl fmt::Debug for EntrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntrySource::Constant(value) => f.debug_tuple("Constant").field(value).finish(),
            EntrySource::Path => f.write_str("Path"),
            EntrySource::Method => f.write_str("Method"),
            EntrySource::Header(name) => f.debug_tuple("Header").field(name).finish(),
            EntrySource::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// The cost of a request (Sluice's `hits_addend`): how many hits it counts.
///
/// A cost is never 0 (which would check without counting), since it is usually read from
/// something the client controls: 0 or a header value that does not parse counts one hit, and a
/// value too large for `u32` counts `u32::MAX` hits, which Sluice denies and records nothing for.
/// (A [`Descriptor`] built by hand may still say 0 explicitly.)
#[derive(Clone)]
pub struct Cost(CostFn);

type CostFn = Arc<dyn Fn(&Parts) -> Option<u32> + Send + Sync>;

impl Cost {
    /// The decimal number in header `name`.
    pub fn from_header(name: HeaderName) -> Self {
        Cost(Arc::new(move |parts: &Parts| {
            let value = parts.headers.get(&name)?;
            Some(parse_cost(value.as_bytes()))
        }))
    }

    /// Any function of the request head (the size of an upload from `content-length`, a batch
    /// size from the path). `None` counts one hit.
    pub fn from_fn<F>(cost: F) -> Self
    where
        F: Fn(&Parts) -> Option<u32> + Send + Sync + 'static,
    {
        Cost(Arc::new(cost))
    }

    pub(crate) fn of(&self, request: &Parts) -> Option<u32> {
        (self.0)(request).map(|hits| hits.max(1))
    }
}

impl fmt::Debug for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cost(..)")
    }
}

/// A client's number of hits: decimal digits (surrounding spaces allowed), saturating at
/// `u32::MAX`; anything else is one hit.
fn parse_cost(bytes: &[u8]) -> u32 {
    let digits = bytes.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return 1;
    }
    let value = digits.iter().fold(0u64, |total, digit| {
        total
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    });
    u32::try_from(value).unwrap_or(u32::MAX).max(1)
}

/// One descriptor, its entries read from each request in the order they were added.
///
/// ```
/// use sluice_tower::{DescriptorTemplate, EntrySource};
/// # #[derive(Clone)] struct Claims { tenant: String }
/// // Sluice's convention: the tenant from a verified token's claims, then path and method.
/// let template = DescriptorTemplate::new()
///     .tenant(EntrySource::extension(|claims: &Claims| Some(claims.tenant.clone())))
///     .path()
///     .method();
/// ```
#[derive(Clone, Debug, Default)]
pub struct DescriptorTemplate {
    entries: Vec<(String, EntrySource)>,
    cost: Option<Cost>,
}

impl DescriptorTemplate {
    /// A template with no entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sluice's convention with the tenant taken from header `tenant_header`: `tenant_id`, `path`,
    /// `method`.
    pub fn sluice(tenant_header: HeaderName) -> Self {
        Self::new()
            .tenant(EntrySource::Header(tenant_header))
            .path()
            .method()
    }

    /// The tenant entry (`tenant_id`). Left out when the source has no value: Sluice then
    /// counts the request as tenant `anonymous`.
    pub fn tenant(self, source: EntrySource) -> Self {
        self.entry(TENANT_KEY, source)
    }

    /// The `path` entry: the request path without its query.
    pub fn path(self) -> Self {
        self.entry(PATH_KEY, EntrySource::Path)
    }

    /// The `method` entry.
    pub fn method(self) -> Self {
        self.entry(METHOD_KEY, EntrySource::Method)
    }

    /// Any entry (for a Sluice started with other `SLUICE_*_KEY`s, or for keys of your own).
    pub fn entry(mut self, key: impl Into<String>, source: EntrySource) -> Self {
        self.entries.push((key.into(), source));
        self
    }

    /// This descriptor's own cost, overriding the request's.
    pub fn cost(mut self, cost: Cost) -> Self {
        self.cost = Some(cost);
        self
    }
}

impl DescriptorBuilder for DescriptorTemplate {
    fn build(&self, request: &Parts, out: &mut Vec<Descriptor>) {
        let mut descriptor = Descriptor::new();
        for (key, source) in &self.entries {
            if let Some(value) = source.value(request) {
                descriptor.push(key.clone(), value);
            }
        }
        if descriptor.is_empty() {
            return;
        }
        descriptor.hits_addend = self.cost.as_ref().and_then(|cost| cost.of(request));
        out.push(descriptor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method("PUT").uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn built(builder: &impl DescriptorBuilder, request: &Parts) -> Vec<Descriptor> {
        let mut out = Vec::new();
        builder.build(request, &mut out);
        out
    }

    #[derive(Clone)]
    struct Claims {
        tenant: String,
    }

    #[test]
    fn the_sluice_template_reads_tenant_path_and_method_in_order() {
        let request = head("/v1/items/7?page=2", &[("x-tenant", "acme")]);
        let template = DescriptorTemplate::sluice(HeaderName::from_static("x-tenant"));
        assert_eq!(
            built(&template, &request),
            vec![
                Descriptor::new()
                    .entry("tenant_id", "acme")
                    .entry("path", "/v1/items/7")
                    .entry("method", "PUT")
            ]
        );
    }

    #[test]
    fn a_missing_or_empty_tenant_leaves_the_entry_out_so_sluice_counts_anonymous() {
        let template = DescriptorTemplate::sluice(HeaderName::from_static("x-tenant"));
        for request in [head("/a", &[]), head("/a", &[("x-tenant", "")])] {
            let descriptors = built(&template, &request);
            let keys: Vec<_> = descriptors[0].entries().map(|(k, _)| k).collect();
            assert_eq!(keys, ["path", "method"]);
        }
    }

    #[test]
    fn the_tenant_comes_from_an_extension_an_auth_layer_inserted() {
        let template = DescriptorTemplate::new()
            .tenant(EntrySource::extension(|c: &Claims| Some(c.tenant.clone())))
            .path();
        let mut request = head("/x", &[("x-tenant", "forged")]);
        request.extensions.insert(Claims {
            tenant: "globex".into(),
        });
        let descriptors = built(&template, &request);
        assert_eq!(
            descriptors[0].entries().collect::<Vec<_>>(),
            [("tenant_id", "globex"), ("path", "/x")]
        );
    }

    #[test]
    fn a_template_whose_every_source_is_absent_adds_no_descriptor() {
        let template =
            DescriptorTemplate::new().tenant(EntrySource::Header(HeaderName::from_static("x-t")));
        assert!(built(&template, &head("/", &[])).is_empty());
    }

    #[test]
    fn vectors_and_tuples_add_one_descriptor_per_builder() {
        let per_tenant = DescriptorTemplate::new()
            .tenant(EntrySource::Header(HeaderName::from_static("x-t")))
            .path();
        let global = DescriptorTemplate::new().entry("scope", EntrySource::Constant("all".into()));
        let custom = from_fn(|parts: &Parts, out: &mut Vec<Descriptor>| {
            out.push(Descriptor::new().entry("host", parts.uri.host().unwrap_or("none")));
        });
        let request = head("/p", &[("x-t", "a")]);
        assert_eq!(
            built(&(per_tenant.clone(), global.clone(), custom), &request).len(),
            3
        );
        assert_eq!(built(&vec![per_tenant, global], &request).len(), 2);
    }

    #[test]
    fn a_cost_from_a_header_is_never_zero_and_saturates() {
        let cost = Cost::from_header(HeaderName::from_static("x-cost"));
        let cases = [
            ("5", Some(5)),
            (" 12 ", Some(12)),
            ("0", Some(1)),
            ("-3", Some(1)),
            ("1e9", Some(1)),
            ("", Some(1)),
            ("99999999999999999999999", Some(u32::MAX)),
        ];
        for (value, expected) in cases {
            assert_eq!(
                cost.of(&head("/", &[("x-cost", value)])),
                expected,
                "x-cost: {value:?}"
            );
        }
        assert_eq!(cost.of(&head("/", &[])), None);
    }

    #[test]
    fn a_template_cost_becomes_the_descriptors_hits_addend() {
        let template = DescriptorTemplate::new()
            .path()
            .cost(Cost::from_header(HeaderName::from_static("x-cost")));
        let descriptors = built(&template, &head("/upload", &[("x-cost", "40")]));
        assert_eq!(descriptors[0].cost(), Some(40));
    }
}
