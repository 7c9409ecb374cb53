//! The test's own token issuer: a fresh ES256 key pair per test, the JWKS file Envoy verifies
//! against, and tokens signed with the key — or deliberately not (no signature, another key,
//! expired, another issuer or audience).

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The `iss` the shipped configurations require.
pub const ISSUER: &str = "https://auth.example.com/";
/// The `aud` the shipped configurations require.
pub const AUDIENCE: &str = "edge";
/// The key id in the JWKS and in every token header.
const KEY_ID: &str = "edge-test-key";

/// An ES256 signing key and its public half.
pub struct TokenIssuer {
    /// PKCS#8 DER of the private key, what `jsonwebtoken` signs with.
    pkcs8: Vec<u8>,
    /// The uncompressed public point `04 || x || y`, for the JWKS.
    public_point: Vec<u8>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    iat: u64,
    exp: u64,
}

impl TokenIssuer {
    /// A new random P-256 key pair.
    pub fn generate() -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .unwrap_or_else(|err| panic!("cannot generate a P-256 key: {err}"));
        let pkcs8 = key
            .to_pkcs8v1()
            .unwrap_or_else(|err| panic!("cannot serialise the P-256 key: {err}"))
            .as_ref()
            .to_vec();
        let public_point = key.public_key().as_ref().to_vec();
        assert_eq!(public_point.len(), 65, "an uncompressed P-256 point");
        TokenIssuer {
            pkcs8,
            public_point,
        }
    }

    /// The public key as a JWKS document (one `EC` key with this issuer's key id).
    pub fn jwks(&self) -> String {
        let (x, y) = self.public_point[1..].split_at(32);
        serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "alg": "ES256",
                "use": "sig",
                "kid": KEY_ID,
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }]
        })
        .to_string()
    }

    /// Writes [`TokenIssuer::jwks`] to `path`.
    pub fn write_jwks(&self, path: &Path) {
        std::fs::write(path, self.jwks())
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    }

    /// A valid one-hour token for `tenant`.
    pub fn token(&self, tenant: &str) -> String {
        self.sign(&claims(Some(tenant), 3600))
    }

    /// A correctly signed one-hour token for `tenant` that names `issuer` and `audience` instead
    /// of the ones the shipped configurations require.
    pub fn token_from(&self, tenant: &str, issuer: &str, audience: &str) -> String {
        self.sign(&Claims {
            iss: issuer,
            aud: audience,
            ..claims(Some(tenant), 3600)
        })
    }

    /// A valid one-hour token with no `tenant_id` claim.
    pub fn token_without_tenant(&self) -> String {
        self.sign(&claims(None, 3600))
    }

    /// A correctly signed token for `tenant` that expired ten minutes ago (beyond any clock skew
    /// allowance).
    pub fn expired_token(&self, tenant: &str) -> String {
        self.sign(&claims(Some(tenant), -600))
    }

    /// A token for `tenant` with `alg: none` and no signature.
    pub fn unsigned_token(&self, tenant: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = serde_json::to_vec(&claims(Some(tenant), 3600))
            .unwrap_or_else(|err| panic!("cannot encode claims: {err}"));
        format!("{header}.{}.", URL_SAFE_NO_PAD.encode(payload))
    }

    fn sign(&self, claims: &Claims<'_>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KEY_ID.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .unwrap_or_else(|err| panic!("cannot sign a test token: {err}"))
    }
}

fn claims(tenant: Option<&str>, lifetime_seconds: i64) -> Claims<'_> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_else(|err| panic!("the clock is before 1970: {err}"))
        .as_secs();
    Claims {
        iss: ISSUER,
        aud: AUDIENCE,
        sub: "test-user",
        tenant_id: tenant,
        iat: now,
        exp: now.saturating_add_signed(lifetime_seconds),
    }
}
