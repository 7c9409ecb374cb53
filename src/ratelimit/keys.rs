//! The counter key format, in one place: how a (policy or override, tenant, window) becomes the
//! name of one sliding-window log, in Redis and in the in-process counter alike.
//!
//! ```text
//! {prefix}{<tenant>}:<suffix>
//!   tenant  the descriptor's tenant when it is a well-formed tenant id, else `~` and 24 hex
//!           digits of a SHA-256 of its exact bytes (`~` is never part of a tenant id)
//!   suffix  p:<policy uuid>              a policy's log, shared by every endpoint it matches
//!           p:<policy uuid>:w<seconds>   an override on that policy with another window
//!           o:<32 hex digits>:<seconds>  an override with no policy: a hash of the entries
//! ```
//! The braces are Redis Cluster's hash tag: every key of one tenant lands in one slot, which the
//! multi-key script requires. A prefix never contains a brace (checked where it is configured), and
//! a tenant never does (hashed otherwise), so the tag is always the tenant.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::domain::{
    PolicyId,
    tenant::{MAX_TENANT_ID_LEN, is_tenant_char},
};

/// The tenant as written into counter keys (see the module doc): a value of any length or bytes
/// can never break the hash tag, and two different values never share a counter by accident.
/// `text` is `tenant` as UTF-8, when it is.
pub(crate) fn counter_tenant<'a>(tenant: &'a [u8], text: Option<&'a str>) -> Cow<'a, str> {
    match text {
        Some(text) if is_tenant_id(text) => Cow::Borrowed(text),
        _ => Cow::Owned(format!("~{}", hex::encode(&Sha256::digest(tenant)[..12]))),
    }
}

/// Whether `text` is written into counter keys as it is: a well-formed tenant id.
pub(crate) fn is_tenant_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_TENANT_ID_LEN && text.chars().all(is_tenant_char)
}

/// `p:<policy uuid>`: a policy's own log.
pub(crate) fn policy_suffix(id: PolicyId) -> String {
    format!("p:{id}")
}

/// `<policy suffix>:w<window>`: the log of an override on a matched policy whose window differs
/// from the policy's, so trimming it by its own window never drops the policy's hits.
pub(crate) fn windowed_suffix(policy_suffix: &str, window_seconds: u64) -> String {
    format!("{policy_suffix}:w{window_seconds}")
}

/// `o:<hash of the descriptor's entries>:<window>`: the log of an override with no matching
/// policy, one per distinct descriptor. The entries' exact bytes are hashed, so a value of any
/// length fits in a key.
pub(crate) fn override_suffix(entries: &[(&[u8], &[u8])], window_seconds: u64) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in entries {
        // Lengths first, so ("ab","c") and ("a","bc") differ.
        hasher.update((key.len() as u64).to_le_bytes());
        hasher.update(key);
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    format!(
        "o:{}:{window_seconds}",
        hex::encode(&hasher.finalize()[..16])
    )
}

/// The full key of one log: `{prefix}{<tenant>}:<suffix>`.
pub(crate) fn counter_key(prefix: &str, tenant: &str, suffix: &str) -> String {
    format!("{prefix}{{{tenant}}}:{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(bytes: &[u8]) -> String {
        counter_tenant(bytes, std::str::from_utf8(bytes).ok()).into_owned()
    }

    #[test]
    fn counter_tenants_keep_valid_ids_and_hash_the_rest() {
        assert_eq!(tenant(b"acme"), "acme");
        assert_eq!(tenant(b"anonymous"), "anonymous");
        let long = "x".repeat(65);
        for odd in [
            &b"a{b}"[..],
            b"with space",
            long.as_bytes(),
            "é".as_bytes(),
            b"\xff\xfe",
        ] {
            let key = tenant(odd);
            assert!(
                key.starts_with('~') && !key.contains(['{', '}']) && key.len() == 25,
                "{odd:?}: {key}"
            );
        }
        assert_ne!(tenant(b"a{b}"), tenant(b"a{c}"));
        // Byte strings that read the same after a lossy decode stay apart.
        assert_ne!(tenant(b"t\xff"), tenant(b"t\xfe"));
    }

    #[test]
    fn override_suffixes_distinguish_entries_and_windows() {
        let suffix = |entries: &[(&str, &str)], window| {
            let bytes: Vec<(&[u8], &[u8])> = entries
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
            override_suffix(&bytes, window)
        };
        let a = suffix(&[("ab", "c")], 60);
        assert_ne!(a, suffix(&[("a", "bc")], 60));
        assert_ne!(suffix(&[("a", "b")], 60), suffix(&[("a", "b")], 1));
        assert_eq!(a, suffix(&[("ab", "c")], 60));
        assert_ne!(
            override_suffix(&[(b"k", b"\xff")], 60),
            override_suffix(&[(b"k", b"\xfe")], 60)
        );
    }

    #[test]
    fn keys_put_the_tenant_in_the_hash_tag() {
        let id = PolicyId::generate();
        let policy = policy_suffix(id);
        assert_eq!(policy, format!("p:{id}"));
        assert_eq!(windowed_suffix(&policy, 1), format!("p:{id}:w1"));
        assert_eq!(
            counter_key("sluice:", "acme", &policy),
            format!("sluice:{{acme}}:p:{id}")
        );
    }
}
