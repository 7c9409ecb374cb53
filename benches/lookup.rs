//! Lookup in one tenant's compiled patterns (`PatternSet::find`, what `PolicySnapshot::lookup`
//! does per descriptor) with 10, 1,000 and 10,000 patterns: the index must keep the cost flat
//! (issue 9: 10,000 patterns at most 2× 10). `linear` tries every pattern most specific first,
//! as `PatternSet::find` did before the index, as the baseline of the same run.
//!
//!   cargo bench --bench lookup                  # figures in docs/benchmarks.md
//!   cargo bench --bench lookup -- indexed       # divan's filter

use std::hint::black_box;

use divan::{Bencher, counter::ItemsCount};
use sluice::domain::{EndpointPattern, PatternSet};

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// `count` patterns of one tenant in groups of four realistic shapes: a method with a final
/// `*`, a method with literals only, a final `**`, and a `*` in the middle.
fn patterns(count: usize) -> Vec<(EndpointPattern, usize)> {
    (0..count)
        .map(|i| {
            let group = i / 4;
            let raw = match i % 4 {
                0 => format!("GET /v1/svc{group}/items/*"),
                1 => format!("POST /v1/svc{group}/items"),
                2 => format!("/v1/svc{group}/admin/**"),
                _ => format!("/v1/svc{group}/users/*/orders"),
            };
            (EndpointPattern::parse(&raw).expect("valid pattern"), i)
        })
        .collect()
}

/// 64 requests spread over the set's groups: hits of each shape (through the method trie and
/// the one without a method), a query string, and misses that walk part of the trie.
fn requests(count: usize) -> Vec<(Option<&'static str>, String)> {
    let groups = count.div_ceil(4);
    (0..64)
        .map(|i| {
            let group = i * 7919 % groups;
            match i % 8 {
                0 => (Some("GET"), format!("/v1/svc{group}/items/42")),
                1 => (Some("post"), format!("/v1/svc{group}/items")),
                2 => (None, format!("/v1/svc{group}/admin/users/7/roles")),
                3 => (Some("GET"), format!("/v1/svc{group}/users/7/orders?page=2")),
                4 => (Some("DELETE"), format!("/v1/svc{group}/items/42")),
                5 => (None, format!("/v1/svc{group}/users/7/invoices")),
                6 => (Some("GET"), "/healthz".to_owned()),
                _ => (None, format!("/v2/svc{group}/items")),
            }
        })
        .collect()
}

fn run(
    bencher: Bencher,
    count: usize,
    find: fn(&PatternSet<usize>, Option<&str>, &str) -> Option<usize>,
) {
    let set = PatternSet::new(patterns(count));
    let requests = requests(count);
    bencher
        .counter(ItemsCount::new(requests.len()))
        .bench_local(|| {
            for (method, path) in &requests {
                black_box(find(black_box(&set), *method, path));
            }
        });
}

/// The index: `PatternSet::find`.
#[divan::bench(args = SIZES)]
fn indexed(bencher: Bencher, count: usize) {
    run(bencher, count, |set, method, path| {
        set.find(method, path).copied()
    });
}

/// The baseline: every pattern in specificity order until one matches.
#[divan::bench(args = SIZES)]
fn linear(bencher: Bencher, count: usize) {
    run(bencher, count, |set, method, path| {
        set.iter()
            .find(|(pattern, _)| pattern.matches(method, path))
            .map(|(_, value)| *value)
    });
}
