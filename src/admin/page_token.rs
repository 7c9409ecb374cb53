//! Opaque, tamper-evident page tokens for `ListPolicies`: keyset cursors (the last id of the
//! previous page, plus the filter it was issued for) signed with HMAC-SHA256, so a client can
//! neither forge a cursor nor reuse one with a different filter.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::PolicyId;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC kept in a token: 128 bits is ample against forgery.
const MAC_LEN: usize = 16;
const VERSION: u8 = 1;

/// Signs and checks page tokens. Every instance built from the same key material accepts the
/// others' tokens.
#[derive(Clone)]
pub struct PageTokenCodec {
    key: [u8; 32],
}

impl std::fmt::Debug for PageTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenCodec([redacted])")
    }
}

impl PageTokenCodec {
    /// Derives the signing key from a secret (the random one the store keeps for page tokens).
    pub fn new(key_material: &[u8]) -> Self {
        let mut mac =
            HmacSha256::new_from_slice(key_material).expect("HMAC accepts any key length");
        mac.update(b"sluice page tokens v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// A token that continues after `last` for a listing filtered by `filter` ("" = none).
    pub fn encode(&self, last: PolicyId, filter: &str) -> String {
        let mut payload = Vec::with_capacity(1 + 16 + filter.len() + MAC_LEN);
        payload.push(VERSION);
        payload.extend_from_slice(last.as_uuid().as_bytes());
        payload.extend_from_slice(filter.as_bytes());
        let mut mac = self.mac();
        mac.update(&payload);
        payload.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The id to continue after, if `token` is one of ours and was issued for `filter`.
    pub fn decode(&self, token: &str, filter: &str) -> Result<PolicyId, String> {
        const INVALID: &str =
            "is not a page token this service issued (it may be altered or truncated)";
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| INVALID.to_owned())?;
        if raw.len() < 1 + 16 + MAC_LEN || raw[0] != VERSION {
            return Err(INVALID.to_owned());
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_truncated_left(tag)
            .map_err(|_| INVALID.to_owned())?;
        if &payload[17..] != filter.as_bytes() {
            return Err(
                "was issued for a different tenant_id filter; repeat the same filter or start over"
                    .to_owned(),
            );
        }
        let id = Uuid::from_slice(&payload[1..17]).map_err(|_| INVALID.to_owned())?;
        Ok(PolicyId::from(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_the_filter() {
        let codec = PageTokenCodec::new(b"key material");
        let id = PolicyId::generate();
        let token = codec.encode(id, "acme");
        assert_eq!(codec.decode(&token, "acme").unwrap(), id);
        assert!(
            codec
                .decode(&token, "globex")
                .unwrap_err()
                .contains("different tenant_id")
        );
        assert!(codec.decode(&token, "").is_err());
    }

    #[test]
    fn rejects_tampered_and_foreign_tokens() {
        let codec = PageTokenCodec::new(b"key material");
        let token = codec.encode(PolicyId::generate(), "");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[5] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(&bytes);
        for bad in [
            tampered.as_str(),
            "",
            "not base64!",
            &token[..token.len() - 2],
        ] {
            assert!(codec.decode(bad, "").is_err(), "{bad:?}");
        }
        let other = PageTokenCodec::new(b"other key");
        assert!(other.decode(&token, "").is_err());
    }
}
