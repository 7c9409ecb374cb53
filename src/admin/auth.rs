//! Admin authentication: turns `authorization: Bearer <JWT>` gRPC metadata into a [`TenantScope`].
//!
//! Keys come from `SLUICE_JWT_HS256_SECRET` (HS256) and/or `SLUICE_JWT_PUBLIC_KEYS`: one PEM public
//! key (RSA → RS256, EC P-256 → ES256, EC P-384 → ES384, Ed25519 → EdDSA) or a JWKS document whose
//! keys are chosen by the token's `kid`, a JWK's own `alg` restricting what it verifies. Every
//! configured key accepts exactly one algorithm, and a token is only ever checked against keys of
//! its own algorithm: an HS256 token is never checked against a public key (algorithm confusion)
//! and `alg: none` never verifies.
//!
//! Claims: `exp` required, `nbf` honoured, both with [`CLOCK_SKEW_LEEWAY`] of tolerance; `iss` and
//! `aud` checked (and then required) only when `SLUICE_JWT_ISSUER` / `SLUICE_JWT_AUDIENCE` are set;
//! `tenant_id` a [`TenantId`]; `roles` an optional array of strings, where [`PLATFORM_ADMIN_ROLE`]
//! makes the caller a platform admin and `tenant_id` optional. The scope itself comes from
//! [`TenantScope::from_claims`], which refuses a tenant-scoped token for the reserved `anonymous`
//! tenant: that caller is authenticated but may do nothing, so every RPC is PERMISSION_DENIED.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::domain::{TenantId, TenantScope, tenant::ScopeError};

/// The role that lets a token act on every tenant.
pub const PLATFORM_ADMIN_ROLE: &str = "platform-admin";

/// How far `exp` and `nbf` may be off: admin clients and Sluice run on different hosts whose clocks
/// drift, and a token refused for being two seconds early is a confusing failure. 30 s is short
/// next to any sensible token lifetime.
pub const CLOCK_SKEW_LEEWAY: Duration = Duration::from_secs(30);

pub use super::error::ERROR_DOMAIN;

const HS256_SECRET_SETTING: &str = "SLUICE_JWT_HS256_SECRET";
const PUBLIC_KEYS_SETTING: &str = "SLUICE_JWT_PUBLIC_KEYS";

/// An HS256 secret shorter than the hash output weakens HS256 (RFC 7518 §3.2); we only warn, so a
/// quick local test with a short secret still works.
const RECOMMENDED_SECRET_LEN: usize = 32;

// P-256 and P-384 curve OIDs as they appear, DER-encoded, in a SubjectPublicKeyInfo. jsonwebtoken
// classifies an EC PEM key without looking at its curve, so we look ourselves.
const P256_OID_DER: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const P384_OID_DER: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Where admin tokens' keys come from and which `iss` / `aud` they must carry.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// Shared HS256 secret (`SLUICE_JWT_HS256_SECRET` or the contents of `..._FILE`).
    pub hs256_secret: Option<Vec<u8>>,
    /// A PEM public key or a JWKS file (`SLUICE_JWT_PUBLIC_KEYS`).
    pub public_keys_path: Option<PathBuf>,
    /// Required `iss` when set (`SLUICE_JWT_ISSUER`).
    pub issuer: Option<String>,
    /// Required `aud` when set (`SLUICE_JWT_AUDIENCE`).
    pub audience: Option<String>,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("public_keys_path", &self.public_keys_path)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A JWT key setting that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "no JWT key is configured: set {HS256_SECRET_SETTING}, {HS256_SECRET_SETTING}_FILE or {PUBLIC_KEYS_SETTING}"
    )]
    NoKey,
    #[error("{HS256_SECRET_SETTING} (or {HS256_SECRET_SETTING}_FILE) is empty")]
    EmptySecret,
    #[error("{PUBLIC_KEYS_SETTING}: cannot read {}: {error}", .path.display())]
    UnreadableKeys {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{PUBLIC_KEYS_SETTING}: {} holds no usable key: {reason}", .path.display())]
    NoUsableKey { path: PathBuf, reason: String },
}

/// Why a caller was refused: not authenticated, or (only [`AuthError::Scope`]) authenticated but
/// given no scope. The message is safe to send to the client: it says what is wrong and never
/// contains the token or a key. Mapped to a status in `admin::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization metadata")]
    MissingMetadata,
    #[error("authorization metadata is not printable ASCII")]
    UnreadableMetadata,
    #[error("authorization metadata must use the Bearer scheme")]
    NotBearer,
    #[error("bearer token is empty")]
    EmptyToken,
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAccepted(String),
    #[error("token algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("token kid matches no configured key")]
    UnknownKeyId,
    #[error("token signature is invalid")]
    InvalidSignature,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("token {claim} claim is invalid: {reason}")]
    InvalidClaim { claim: &'static str, reason: String },
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A valid token whose claims name the reserved `anonymous` tenant without the
    /// platform-admin role.
    #[error(transparent)]
    Scope(ScopeError),
}

/// Where a verification key came from, for logs and Debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyOrigin {
    Hs256Secret,
    PemFile,
    JwksFile,
}

/// One configured key and the single algorithm it verifies.
struct VerificationKey {
    /// `kid` of a JWKS key; `None` for the HS256 secret and a PEM key.
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    origin: KeyOrigin,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Verifies admin JWTs against the configured keys and turns their claims into a [`TenantScope`].
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Vec<VerificationKey>,
    /// exp/nbf/iss/aud rules shared by every key; `algorithms` is set per token.
    validation: Validation,
}

impl JwtVerifier {
    /// Loads the configured keys. Fails with an error naming the setting
    /// (`SLUICE_JWT_PUBLIC_KEYS` etc.) when a key file is unreadable or holds no usable key, or
    /// when no key at all is configured.
    pub fn new(config: JwtConfig) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.is_empty() {
                return Err(AuthConfigError::EmptySecret);
            }
            if secret.len() < RECOMMENDED_SECRET_LEN {
                tracing::warn!(
                    "{HS256_SECRET_SETTING} is shorter than {RECOMMENDED_SECRET_LEN} bytes; use a longer random secret"
                );
            }
            keys.push(VerificationKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
                origin: KeyOrigin::Hs256Secret,
            });
        }
        if let Some(path) = &config.public_keys_path {
            keys.extend(load_public_keys(path)?);
        }
        if keys.is_empty() {
            return Err(AuthConfigError::NoKey);
        }

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `exp` is required by `ScopeClaims::into_scope`, not here: jsonwebtoken reports an `exp`
        // of the wrong type as missing when it is a required claim, and as malformed otherwise.
        let mut required = Vec::new();
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without this jsonwebtoken refuses every token that carries an `aud` at all.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        Ok(Self { keys, validation })
    }

    /// Verifies `token` (the part after `Bearer `) and returns whom it may act for.
    pub fn verify(&self, token: &str) -> Result<TenantScope, AuthError> {
        let header = TokenHeader::parse(token)?;
        let candidates = self.candidate_keys(&header)?;

        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.algorithm];
        for candidate in candidates {
            match jsonwebtoken::decode::<ScopeClaims>(token, &candidate.key, &validation) {
                Ok(data) => return data.claims.into_scope(),
                Err(err) => match err.kind() {
                    // Several keys may share an algorithm (a JWKS without kids, a rotation):
                    // another one may still match.
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidKeyFormat => {
                        tracing::warn!(
                            kid = candidate.kid.as_deref(),
                            algorithm = ?candidate.algorithm,
                            origin = ?candidate.origin,
                            "a configured JWT key cannot verify signatures; check {PUBLIC_KEYS_SETTING}"
                        );
                        continue;
                    }
                    _ => return Err(map_jwt_error(err.kind(), header.algorithm)),
                },
            }
        }
        Err(AuthError::InvalidSignature)
    }

    /// Reads the bearer token from `authorization` metadata and verifies it.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<TenantScope, AuthError> {
        let value = metadata
            .get("authorization")
            .ok_or(AuthError::MissingMetadata)?
            .to_str()
            .map_err(|_| AuthError::UnreadableMetadata)?
            .trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        self.verify(token)
    }

    /// The keys a token with this header may be checked against: only keys of the token's own
    /// algorithm; with a `kid`, the keys of that id (or, if none has it, the keys without an id).
    fn candidate_keys(&self, header: &TokenHeader) -> Result<Vec<&VerificationKey>, AuthError> {
        let not_accepted = || AuthError::AlgorithmNotAccepted(format!("{:?}", header.algorithm));
        if !self.keys.iter().any(|k| k.algorithm == header.algorithm) {
            return Err(not_accepted());
        }
        let Some(kid) = &header.kid else {
            return Ok(self.keys_for(header.algorithm, |_| true));
        };
        if self.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
            let named = self.keys_for(header.algorithm, |k| k.kid.as_ref() == Some(kid));
            return if named.is_empty() {
                Err(not_accepted())
            } else {
                Ok(named)
            };
        }
        let anonymous = self.keys_for(header.algorithm, |k| k.kid.is_none());
        if anonymous.is_empty() {
            Err(AuthError::UnknownKeyId)
        } else {
            Ok(anonymous)
        }
    }

    fn keys_for(
        &self,
        algorithm: Algorithm,
        filter: impl Fn(&VerificationKey) -> bool,
    ) -> Vec<&VerificationKey> {
        self.keys
            .iter()
            .filter(|k| k.algorithm == algorithm && filter(k))
            .collect()
    }
}

/// The parts of a JWT header Sluice decides on before touching a key.
struct TokenHeader {
    algorithm: Algorithm,
    kid: Option<String>,
}

impl TokenHeader {
    fn parse(token: &str) -> Result<Self, AuthError> {
        #[derive(Deserialize)]
        struct RawHeader {
            alg: Option<String>,
            kid: Option<String>,
            crit: Option<Value>,
        }

        let mut parts = token.split('.');
        let (Some(encoded), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "it must be three base64url parts separated by dots",
            ));
        };
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| AuthError::Malformed("the header is not base64url"))?;
        let raw: RawHeader = serde_json::from_slice(&json)
            .map_err(|_| AuthError::Malformed("the header is not the expected JSON object"))?;
        let alg = raw
            .alg
            .ok_or(AuthError::Malformed("the header has no alg"))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgorithmNotAccepted("none".into()));
        }
        let algorithm = Algorithm::from_str(&alg).map_err(|_| AuthError::UnsupportedAlgorithm)?;
        // RFC 7515 §4.1.11: a token naming extensions we do not implement must be refused.
        if raw.crit.is_some() {
            return Err(AuthError::Malformed(
                "the header lists critical extensions Sluice does not support",
            ));
        }
        Ok(Self {
            algorithm,
            kid: raw.kid,
        })
    }
}

/// The claims that decide the scope. Kept as raw JSON so a wrong type gets our own message
/// instead of serde's, which would quote the claim's value.
#[derive(Deserialize)]
struct ScopeClaims {
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    tenant_id: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
}

impl ScopeClaims {
    fn into_scope(self) -> Result<TenantScope, AuthError> {
        // jsonwebtoken has already checked a present `exp` against the clock.
        if self.exp.is_none() {
            return Err(AuthError::MissingClaim("exp"));
        }
        let roles = match self.roles {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(role) => Ok(role),
                    _ => Err(invalid_roles()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(invalid_roles()),
        };
        let tenant = match self.tenant_id {
            None => None,
            Some(Value::String(raw)) => {
                Some(
                    TenantId::parse(&raw).map_err(|reason| AuthError::InvalidClaim {
                        claim: "tenant_id",
                        reason,
                    })?,
                )
            }
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: "tenant_id",
                    reason: "must be a string".into(),
                });
            }
        };
        let platform_admin = roles.iter().any(|role| role == PLATFORM_ADMIN_ROLE);
        TenantScope::from_claims(tenant, platform_admin).map_err(|err| match err {
            ScopeError::NoTenant => AuthError::MissingClaim("tenant_id"),
            reserved @ ScopeError::ReservedTenant => AuthError::Scope(reserved),
        })
    }
}

fn invalid_roles() -> AuthError {
    AuthError::InvalidClaim {
        claim: "roles",
        reason: "must be an array of strings".into(),
    }
}

/// Maps a jsonwebtoken failure (after the key was chosen) to what the client is told.
fn map_jwt_error(kind: &ErrorKind, algorithm: Algorithm) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(spec_claim(claim)),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim {
            claim: spec_claim(claim),
            reason: "must be a number of seconds since the epoch".into(),
        },
        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAccepted(format!("{algorithm:?}")),
        ErrorKind::Base64(_) => AuthError::Malformed("a part is not base64url"),
        ErrorKind::Json(_) => AuthError::Malformed("the claims are not a JSON object"),
        ErrorKind::Utf8(_) => AuthError::Malformed("a part is not UTF-8"),
        ErrorKind::InvalidToken => {
            AuthError::Malformed("it must be three base64url parts separated by dots")
        }
        _ => AuthError::InvalidSignature,
    }
}

/// The `'static` name of a registered claim jsonwebtoken reports.
fn spec_claim(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "required",
    }
}

/// Reads `SLUICE_JWT_PUBLIC_KEYS`: a JWKS document when it is a JSON object, else a PEM key.
fn load_public_keys(path: &Path) -> Result<Vec<VerificationKey>, AuthConfigError> {
    let no_usable_key = |reason: String| AuthConfigError::NoUsableKey {
        path: path.to_owned(),
        reason,
    };
    let contents = std::fs::read(path).map_err(|error| AuthConfigError::UnreadableKeys {
        path: path.to_owned(),
        error,
    })?;
    if contents.trim_ascii_start().starts_with(b"{") {
        keys_from_jwks(&contents).map_err(no_usable_key)
    } else {
        key_from_pem(&contents)
            .map(|key| vec![key])
            .map_err(no_usable_key)
    }
}

fn key_from_pem(contents: &[u8]) -> Result<VerificationKey, String> {
    let text = std::str::from_utf8(contents)
        .map_err(|_| "it is neither a PEM public key nor a JWKS JSON document".to_owned())?;
    let (label, der) = first_pem_block(text)?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        "CERTIFICATE" => {
            return Err(
                "it is a certificate; give its public key (openssl x509 -pubkey -noout)".into(),
            );
        }
        label if label.contains("PRIVATE KEY") => {
            return Err("it is a private key; give the public key (openssl pkey -pubout)".into());
        }
        label => {
            return Err(format!(
                "a PEM block labelled {label:?} is not a public key"
            ));
        }
    }

    let pem_key = |key: DecodingKey, algorithm| VerificationKey {
        kid: None,
        algorithm,
        key,
        origin: KeyOrigin::PemFile,
    };
    if let Ok(key) = DecodingKey::from_rsa_pem(contents) {
        return Ok(pem_key(key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(contents) {
        let algorithm = if contains(&der, P256_OID_DER) {
            Algorithm::ES256
        } else if contains(&der, P384_OID_DER) {
            Algorithm::ES384
        } else {
            return Err("its EC curve is not supported (use P-256 or P-384)".into());
        };
        return Ok(pem_key(key, algorithm));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(contents) {
        return Ok(pem_key(key, Algorithm::EdDSA));
    }
    Err("the public key is not RSA, EC P-256/P-384 or Ed25519".into())
}

/// The label and DER bytes of the first PEM block in `text`.
fn first_pem_block(text: &str) -> Result<(&str, Vec<u8>), String> {
    let not_pem = || "it is neither a PEM public key nor a JWKS JSON document".to_owned();
    let start = text.find("-----BEGIN ").ok_or_else(not_pem)?;
    let after_begin = &text[start + "-----BEGIN ".len()..];
    let label_end = after_begin.find("-----").ok_or_else(not_pem)?;
    let label = &after_begin[..label_end];
    let body_and_rest = &after_begin[label_end + "-----".len()..];
    let end = body_and_rest
        .find("-----END ")
        .ok_or_else(|| "the PEM block has no END line".to_owned())?;
    let body: String = body_and_rest[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| "the PEM block is not valid base64".to_owned())?;
    Ok((label, der))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn keys_from_jwks(contents: &[u8]) -> Result<Vec<VerificationKey>, String> {
    // Only the position of a syntax error: serde's message may quote key material.
    let set: JwkSet = serde_json::from_slice(contents).map_err(|err| {
        format!(
            "it is not a valid JWKS document (error at line {}, column {})",
            err.line(),
            err.column()
        )
    })?;
    if set.keys.is_empty() {
        return Err("the JWKS document has no keys".into());
    }
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key #{}", index + 1),
        };
        match key_from_jwk(jwk) {
            Ok(key) => keys.push(key),
            Err(reason) => {
                tracing::warn!("{PUBLIC_KEYS_SETTING}: ignoring JWKS {name}: {reason}");
                skipped.push(format!("{name}: {reason}"));
            }
        }
    }
    if keys.is_empty() {
        Err(skipped.join("; "))
    } else {
        Ok(keys)
    }
}

fn key_from_jwk(jwk: &Jwk) -> Result<VerificationKey, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("it is an encryption key (use: enc)".into());
    }
    let natural = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("its EC curve is not supported (use P-256 or P-384)".into()),
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return Err("its OKP curve is not supported (use Ed25519)".into()),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "symmetric (oct) keys are not read from a key file; use {HS256_SECRET_SETTING}"
            ));
        }
        _ => return Err("its key type is not supported (use RSA, EC or OKP)".into()),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => natural,
        Some(declared) => {
            let algorithm = Algorithm::try_from(declared)
                .map_err(|_| format!("its alg {declared} is not a signature algorithm"))?;
            // An RSA key may declare any RSA signature; an EC key's algorithm follows its curve.
            let fits = match natural.family() {
                jsonwebtoken::AlgorithmFamily::Rsa => algorithm.family() == natural.family(),
                _ => algorithm == natural,
            };
            if !fits {
                return Err(format!("its alg {declared} does not fit its key type"));
            }
            algorithm
        }
    };
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| "its key parameters are not valid base64url".to_owned())?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
        origin: KeyOrigin::JwksFile,
    })
}

/// gRPC interceptor for the admin service: verifies the bearer token and puts the caller's
/// [`TenantScope`] into the request's extensions, or refuses with UNAUTHENTICATED (or
/// PERMISSION_DENIED for a token whose claims give no scope).
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Arc<JwtVerifier>,
}

impl AuthInterceptor {
    /// An interceptor sharing `verifier` (and its loaded keys) across every request.
    pub fn new(verifier: Arc<JwtVerifier>) -> Self {
        Self { verifier }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.verifier.authenticate(request.metadata()) {
            Ok(scope) => {
                request.extensions_mut().insert(scope);
                Ok(request)
            }
            Err(err) => {
                tracing::debug!(reason = %err, "refused admin request");
                Err(err.into())
            }
        }
    }
}

/// What a minted token says; see [`mint_hs256_with`].
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    /// `tenant_id`; required unless `roles` holds [`PLATFORM_ADMIN_ROLE`].
    pub tenant: Option<&'a str>,
    /// `roles`; left out of the token when empty.
    pub roles: &'a [String],
    /// Lifetime: `exp` = now + `ttl` (whole seconds, at least 1).
    pub ttl: Duration,
    /// `iss`, for a deployment that sets `SLUICE_JWT_ISSUER`.
    pub issuer: Option<&'a str>,
    /// `aud`, for a deployment that sets `SLUICE_JWT_AUDIENCE`.
    pub audience: Option<&'a str>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// No tenant without the platform-admin role, or the reserved `anonymous` tenant.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("tenant id is invalid: {0}")]
    InvalidTenant(String),
    #[error("the token lifetime must be at least one second")]
    TtlTooShort,
    #[error("cannot sign the token: {0}")]
    Signing(jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Mints an HS256 admin token with `tenant_id`, `roles` and `exp` = now + `ttl`, for
/// `sluice token` and tests.
pub fn mint_hs256(
    secret: &[u8],
    tenant: Option<&str>,
    roles: &[String],
    ttl: Duration,
) -> Result<String, MintError> {
    mint_hs256_with(
        secret,
        &MintRequest {
            tenant,
            roles,
            ttl,
            issuer: None,
            audience: None,
        },
    )
}

/// Like [`mint_hs256`], also setting `iss` / `aud` for a deployment that requires them.
pub fn mint_hs256_with(secret: &[u8], request: &MintRequest<'_>) -> Result<String, MintError> {
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if request.ttl.as_secs() == 0 {
        return Err(MintError::TtlTooShort);
    }
    let tenant = request
        .tenant
        .map(TenantId::parse)
        .transpose()
        .map_err(MintError::InvalidTenant)?;
    // The scope the verifier will derive: a token it would refuse is not minted.
    let platform_admin = request.roles.iter().any(|r| r == PLATFORM_ADMIN_ROLE);
    TenantScope::from_claims(tenant, platform_admin)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let claims = MintedClaims {
        exp: now.saturating_add(request.ttl.as_secs()),
        iat: now,
        tenant_id: request.tenant,
        roles: request.roles,
        iss: request.issuer,
        aud: request.audience,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(MintError::Signing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tonic::Code;
    use tonic::metadata::MetadataValue;
    use tonic_types::StatusExt;

    const SECRET: &[u8] = b"an-hs256-test-secret-of-32-bytes!";

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn later() -> i64 {
        now() + 300
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name)
    }

    fn fixture_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let header = Header {
            kid: kid.map(str::to_owned),
            ..Header::new(algorithm)
        };
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET),
            None,
            claims,
        )
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(&fixture_bytes("rsa-private.pem")).unwrap()
    }

    fn rsa2_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(&fixture_bytes("rsa2-private.pem")).unwrap()
    }

    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).unwrap()
    }

    fn ed_key() -> EncodingKey {
        EncodingKey::from_ed_pem(&fixture_bytes("ed25519-private.pem")).unwrap()
    }

    /// A token with hand-written header JSON and an arbitrary signature part.
    fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn acme_claims() -> Value {
        json!({ "tenant_id": "acme", "exp": later() })
    }

    fn acme() -> TenantScope {
        TenantScope::tenant(TenantId::parse("acme").unwrap()).unwrap()
    }

    fn verifier(config: JwtConfig) -> JwtVerifier {
        JwtVerifier::new(config).unwrap()
    }

    fn hs256_verifier() -> JwtVerifier {
        verifier(JwtConfig {
            hs256_secret: Some(SECRET.to_vec()),
            ..JwtConfig::default()
        })
    }

    fn public_key_verifier(file: &str) -> JwtVerifier {
        verifier(JwtConfig {
            public_keys_path: Some(fixture(file)),
            ..JwtConfig::default()
        })
    }

    /// `expected`: the scope, or a fragment of the refusal message.
    fn check(case: &str, verifier: &JwtVerifier, token: &str, expected: Result<TenantScope, &str>) {
        match (verifier.verify(token), expected) {
            (Ok(scope), Ok(want)) => assert_eq!(scope, want, "{case}"),
            (Err(err), Err(fragment)) => {
                let message = err.to_string();
                assert!(message.contains(fragment), "{case}: got {message:?}");
                assert!(!message.contains(token), "{case}: message echoes the token");
                let status = Status::from(err);
                assert_eq!(status.code(), Code::Unauthenticated, "{case}");
            }
            (got, want) => panic!("{case}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn hs256_claims_decide_the_scope() {
        let verifier = hs256_verifier();
        let home = Some(TenantId::parse("acme").unwrap());
        let cases: Vec<(&str, Value, Result<TenantScope, &str>)> = vec![
            ("tenant token", acme_claims(), Ok(acme())),
            (
                "tenant token with other roles",
                json!({ "tenant_id": "acme", "roles": ["viewer"], "exp": later() }),
                Ok(acme()),
            ),
            (
                "platform admin with a home tenant",
                json!({ "tenant_id": "acme", "roles": ["platform-admin"], "exp": later() }),
                Ok(TenantScope::platform_admin(home)),
            ),
            (
                "platform admin without a tenant",
                json!({ "roles": ["viewer", "platform-admin"], "exp": later() }),
                Ok(TenantScope::platform_admin(None)),
            ),
            (
                "expired",
                json!({ "tenant_id": "acme", "exp": now() - 120 }),
                Err("token expired"),
            ),
            (
                "expired within the clock-skew leeway",
                json!({ "tenant_id": "acme", "exp": now() - 10 }),
                Ok(acme()),
            ),
            (
                "nbf in the future",
                json!({ "tenant_id": "acme", "exp": later(), "nbf": now() + 120 }),
                Err("not valid yet"),
            ),
            (
                "nbf within the clock-skew leeway",
                json!({ "tenant_id": "acme", "exp": later(), "nbf": now() + 10 }),
                Ok(acme()),
            ),
            (
                "missing exp",
                json!({ "tenant_id": "acme" }),
                Err("token has no exp claim"),
            ),
            (
                "exp null",
                json!({ "tenant_id": "acme", "exp": null }),
                Err("token exp claim is invalid"),
            ),
            (
                "expired and without a tenant: expiry is reported",
                json!({ "exp": now() - 120 }),
                Err("token expired"),
            ),
            (
                "exp not a number",
                json!({ "tenant_id": "acme", "exp": "tomorrow" }),
                Err("token exp claim is invalid"),
            ),
            (
                "missing tenant_id",
                json!({ "exp": later() }),
                Err("token has no tenant_id claim"),
            ),
            (
                "missing tenant_id with a non-admin role",
                json!({ "roles": ["viewer"], "exp": later() }),
                Err("token has no tenant_id claim"),
            ),
            (
                "invalid tenant_id",
                json!({ "tenant_id": "acme corp", "exp": later() }),
                Err("token tenant_id claim is invalid"),
            ),
            (
                "tenant_id not a string",
                json!({ "tenant_id": 42, "exp": later() }),
                Err("token tenant_id claim is invalid: must be a string"),
            ),
            (
                "platform admin with an invalid tenant_id",
                json!({ "tenant_id": "*", "roles": ["platform-admin"], "exp": later() }),
                Err("token tenant_id claim is invalid"),
            ),
            (
                "roles not an array",
                json!({ "tenant_id": "acme", "roles": "platform-admin", "exp": later() }),
                Err("token roles claim is invalid"),
            ),
            (
                "a role that is not a string",
                json!({ "tenant_id": "acme", "roles": [1], "exp": later() }),
                Err("token roles claim is invalid"),
            ),
            (
                "iss and aud ignored when not configured",
                json!({ "tenant_id": "acme", "iss": "someone", "aud": "something", "exp": later() }),
                Ok(acme()),
            ),
        ];
        for (case, claims, expected) in cases {
            check(case, &verifier, &hs256(&claims), expected);
        }
    }

    #[test]
    fn forged_or_malformed_tokens_are_refused() {
        let verifier = hs256_verifier();
        let valid = hs256(&acme_claims());
        let signature = valid.rsplit('.').next().unwrap().to_owned();
        let hs_header = json!({ "alg": "HS256", "typ": "JWT" });
        let tampered = raw_token(
            &hs_header,
            &json!({ "tenant_id": "globex", "exp": later() }),
            &signature,
        );
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "wrong secret",
                sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(b"another-secret-entirely-32-bytes"),
                    None,
                    &acme_claims(),
                ),
                "token signature is invalid",
            ),
            ("tampered payload", tampered, "token signature is invalid"),
            (
                "alg none with no signature",
                raw_token(&json!({ "alg": "none" }), &acme_claims(), ""),
                "algorithm none is not accepted",
            ),
            (
                "alg None with a signature",
                raw_token(&json!({ "alg": "None" }), &acme_claims(), &signature),
                "algorithm none is not accepted",
            ),
            (
                "alg NONE",
                raw_token(&json!({ "alg": "NONE", "typ": "JWT" }), &acme_claims(), ""),
                "algorithm none is not accepted",
            ),
            (
                "RS256 token when only HS256 is configured",
                sign(Algorithm::RS256, &rsa_key(), None, &acme_claims()),
                "algorithm RS256 is not accepted",
            ),
            (
                "unknown algorithm",
                raw_token(&json!({ "alg": "HS1024" }), &acme_claims(), &signature),
                "token algorithm is not supported",
            ),
            (
                "critical header extension",
                raw_token(
                    &json!({ "alg": "HS256", "crit": ["exp"] }),
                    &acme_claims(),
                    &signature,
                ),
                "critical extensions",
            ),
            (
                "header without alg",
                raw_token(&json!({ "typ": "JWT" }), &acme_claims(), &signature),
                "the header has no alg",
            ),
            (
                "not a JWT",
                "opaque-api-key".into(),
                "not a well-formed JWT",
            ),
            ("two parts", "abc.def".into(), "not a well-formed JWT"),
            (
                "header not base64url",
                "!!!.e30.sig".into(),
                "the header is not base64url",
            ),
        ];
        for (case, token, fragment) in cases {
            check(case, &verifier, &token, Err(fragment));
        }
    }

    #[test]
    fn public_key_tokens_verify_only_with_their_own_algorithm() {
        let rsa = public_key_verifier("rsa-public.pem");
        let ec = public_key_verifier("ec-public.pem");
        let ed = public_key_verifier("ed25519-public.pem");
        let rsa_and_secret = verifier(JwtConfig {
            hs256_secret: Some(SECRET.to_vec()),
            public_keys_path: Some(fixture("rsa-public.pem")),
            ..JwtConfig::default()
        });
        // The classic algorithm-confusion forgery: HMAC keyed with the public key's PEM bytes.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&fixture_bytes("rsa-public.pem")),
            None,
            &acme_claims(),
        );
        let claims = acme_claims();
        let cases: Vec<(&str, &JwtVerifier, String, Result<TenantScope, &str>)> = vec![
            (
                "RS256 via PEM",
                &rsa,
                sign(Algorithm::RS256, &rsa_key(), None, &claims),
                Ok(acme()),
            ),
            (
                "ES256 via PEM",
                &ec,
                sign(Algorithm::ES256, &ec_key(), None, &claims),
                Ok(acme()),
            ),
            (
                "EdDSA via PEM",
                &ed,
                sign(Algorithm::EdDSA, &ed_key(), None, &claims),
                Ok(acme()),
            ),
            (
                "RS256 signed by another RSA key",
                &rsa,
                sign(Algorithm::RS256, &rsa2_key(), None, &claims),
                Err("token signature is invalid"),
            ),
            (
                "HS256 keyed with the RSA public key",
                &rsa,
                confused.clone(),
                Err("algorithm HS256 is not accepted"),
            ),
            (
                "HS256 keyed with the RSA public key, HS256 also configured",
                &rsa_and_secret,
                confused,
                Err("token signature is invalid"),
            ),
            (
                "HS256 and RS256 configured: RS256 token",
                &rsa_and_secret,
                sign(Algorithm::RS256, &rsa_key(), None, &claims),
                Ok(acme()),
            ),
            (
                "HS256 and RS256 configured: HS256 token",
                &rsa_and_secret,
                hs256(&claims),
                Ok(acme()),
            ),
            (
                "PS256 with an RSA PEM key (RS256 only)",
                &rsa,
                sign(Algorithm::PS256, &rsa_key(), None, &claims),
                Err("algorithm PS256 is not accepted"),
            ),
            (
                "ES256 token against an RSA key",
                &rsa,
                sign(Algorithm::ES256, &ec_key(), None, &claims),
                Err("algorithm ES256 is not accepted"),
            ),
            (
                "RS256 token against an Ed25519 key",
                &ed,
                sign(Algorithm::RS256, &rsa_key(), None, &claims),
                Err("algorithm RS256 is not accepted"),
            ),
            (
                "expired RS256",
                &rsa,
                sign(
                    Algorithm::RS256,
                    &rsa_key(),
                    None,
                    &json!({ "tenant_id": "acme", "exp": now() - 120 }),
                ),
                Err("token expired"),
            ),
        ];
        for (case, verifier, token, expected) in cases {
            check(case, verifier, &token, expected);
        }
    }

    #[test]
    fn jwks_keys_are_selected_by_kid_and_restricted_by_their_alg() {
        let jwks = public_key_verifier("jwks.json");
        let claims = acme_claims();
        let cases: Vec<(&str, String, Result<TenantScope, &str>)> = vec![
            (
                "first RSA key by kid",
                sign(Algorithm::RS256, &rsa_key(), Some("rsa-a"), &claims),
                Ok(acme()),
            ),
            (
                "second RSA key by kid",
                sign(Algorithm::RS256, &rsa2_key(), Some("rsa-b"), &claims),
                Ok(acme()),
            ),
            (
                "kid names a different key than the one that signed",
                sign(Algorithm::RS256, &rsa2_key(), Some("rsa-a"), &claims),
                Err("token signature is invalid"),
            ),
            (
                "unknown kid",
                sign(Algorithm::RS256, &rsa_key(), Some("rsa-z"), &claims),
                Err("token kid matches no configured key"),
            ),
            (
                "no kid: every RS256 key is tried",
                sign(Algorithm::RS256, &rsa2_key(), None, &claims),
                Ok(acme()),
            ),
            (
                "EC key by kid",
                sign(Algorithm::ES256, &ec_key(), Some("ec-a"), &claims),
                Ok(acme()),
            ),
            (
                "JWK alg PS256 refuses RS256",
                sign(Algorithm::RS256, &rsa_key(), Some("rsa-pss"), &claims),
                Err("algorithm RS256 is not accepted"),
            ),
            (
                "JWK alg PS256 accepts PS256",
                sign(Algorithm::PS256, &rsa_key(), Some("rsa-pss"), &claims),
                Ok(acme()),
            ),
            (
                "JWK alg RS256 refuses PS256",
                sign(Algorithm::PS256, &rsa2_key(), Some("rsa-b"), &claims),
                Err("algorithm PS256 is not accepted"),
            ),
            (
                "HS256 token against a JWKS",
                sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(&fixture_bytes("jwks.json")),
                    Some("rsa-a"),
                    &claims,
                ),
                Err("algorithm HS256 is not accepted"),
            ),
        ];
        for (case, token, expected) in cases {
            check(case, &jwks, &token, expected);
        }
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let verifier = verifier(JwtConfig {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: Some("https://issuer.example".into()),
            audience: Some("sluice-admin".into()),
            ..JwtConfig::default()
        });
        let with = |iss: Value, aud: Value| {
            let mut claims = acme_claims();
            if !iss.is_null() {
                claims["iss"] = iss;
            }
            if !aud.is_null() {
                claims["aud"] = aud;
            }
            hs256(&claims)
        };
        let cases: Vec<(&str, String, Result<TenantScope, &str>)> = vec![
            (
                "both match",
                with(json!("https://issuer.example"), json!("sluice-admin")),
                Ok(acme()),
            ),
            (
                "audience list containing ours",
                with(
                    json!("https://issuer.example"),
                    json!(["other", "sluice-admin"]),
                ),
                Ok(acme()),
            ),
            (
                "wrong issuer",
                with(json!("https://evil.example"), json!("sluice-admin")),
                Err("token issuer is not accepted"),
            ),
            (
                "wrong audience",
                with(json!("https://issuer.example"), json!("billing")),
                Err("token audience is not accepted"),
            ),
            (
                "missing issuer",
                with(Value::Null, json!("sluice-admin")),
                Err("token has no iss claim"),
            ),
            (
                "missing audience",
                with(json!("https://issuer.example"), Value::Null),
                Err("token has no aud claim"),
            ),
        ];
        for (case, token, expected) in cases {
            check(case, &verifier, &token, expected);
        }

        let minted = mint_hs256_with(
            SECRET,
            &MintRequest {
                tenant: Some("acme"),
                roles: &[],
                ttl: Duration::from_secs(60),
                issuer: Some("https://issuer.example"),
                audience: Some("sluice-admin"),
            },
        )
        .unwrap();
        check("minted with iss and aud", &verifier, &minted, Ok(acme()));
    }

    #[test]
    fn bad_key_settings_fail_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, contents: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            Some(path)
        };
        let keys_file = |path: Option<PathBuf>| JwtConfig {
            public_keys_path: path,
            ..JwtConfig::default()
        };
        let oct_only = json!({ "keys": [{ "kty": "oct", "kid": "s", "k": "c2VjcmV0" }] });
        let enc_only =
            json!({ "keys": [{ "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" }] });
        let cases: Vec<(&str, JwtConfig, &str)> = vec![
            (
                "nothing configured",
                JwtConfig::default(),
                "SLUICE_JWT_PUBLIC_KEYS",
            ),
            (
                "empty secret",
                JwtConfig {
                    hs256_secret: Some(Vec::new()),
                    ..JwtConfig::default()
                },
                "SLUICE_JWT_HS256_SECRET",
            ),
            (
                "missing key file",
                keys_file(Some(dir.path().join("absent.pem"))),
                "SLUICE_JWT_PUBLIC_KEYS: cannot read",
            ),
            (
                "garbage",
                keys_file(write("garbage.pem", b"hello")),
                "neither a PEM public key nor a JWKS",
            ),
            (
                "private key",
                keys_file(write("private.pem", &fixture_bytes("rsa-private.pem"))),
                "it is a private key",
            ),
            (
                "broken JSON",
                keys_file(write("broken.json", b"{ \"keys\": [")),
                "not a valid JWKS document",
            ),
            (
                "empty JWKS",
                keys_file(write("empty.json", b"{\"keys\": []}")),
                "has no keys",
            ),
            (
                "JWKS with only a symmetric key",
                keys_file(write("oct.json", oct_only.to_string().as_bytes())),
                "symmetric (oct) keys",
            ),
            (
                "JWKS with only an encryption key",
                keys_file(write("enc.json", enc_only.to_string().as_bytes())),
                "encryption key",
            ),
        ];
        for (case, config, fragment) in cases {
            let message = JwtVerifier::new(config).unwrap_err().to_string();
            assert!(
                message.contains("SLUICE_JWT_"),
                "{case}: {message:?} names no setting"
            );
            assert!(message.contains(fragment), "{case}: got {message:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let config = JwtConfig {
            hs256_secret: Some(b"super-secret-value-0123456789abcdef".to_vec()),
            public_keys_path: Some(fixture("rsa-public.pem")),
            issuer: Some("https://issuer.example".into()),
            audience: None,
        };
        let config_debug = format!("{config:?}");
        assert!(
            !config_debug.contains("super-secret-value"),
            "{config_debug}"
        );
        assert!(config_debug.contains("[redacted]"), "{config_debug}");
        assert!(config_debug.contains("https://issuer.example"));

        let verifier_debug = format!("{:?}", JwtVerifier::new(config).unwrap());
        assert!(
            !verifier_debug.contains("super-secret-value"),
            "{verifier_debug}"
        );
        assert!(verifier_debug.contains("RS256"), "{verifier_debug}");
    }

    fn call_with_authorization(value: Option<&str>) -> Result<Request<()>, Status> {
        let mut interceptor = AuthInterceptor::new(Arc::new(hs256_verifier()));
        let mut request = Request::new(());
        if let Some(value) = value {
            let value: MetadataValue<_> = value.parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        interceptor.call(request)
    }

    #[test]
    fn interceptor_puts_the_scope_into_the_request_extensions() {
        let token = hs256(&acme_claims());
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let request = call_with_authorization(Some(&format!("{scheme} {token}"))).unwrap();
            assert_eq!(
                request.extensions().get::<TenantScope>(),
                Some(&acme()),
                "{scheme}"
            );
        }
    }

    #[test]
    fn interceptor_refuses_with_unauthenticated_and_error_info() {
        let token = hs256(&acme_claims());
        let expired = hs256(&json!({ "tenant_id": "acme", "exp": now() - 120 }));
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            ("no header", None, "missing authorization metadata"),
            (
                "basic scheme",
                Some(format!("Basic {token}")),
                "must use the Bearer scheme",
            ),
            (
                "token without a scheme",
                Some(token.clone()),
                "must use the Bearer scheme",
            ),
            (
                "scheme only",
                Some("Bearer".into()),
                "bearer token is empty",
            ),
            (
                "scheme and spaces",
                Some("Bearer   ".into()),
                "bearer token is empty",
            ),
            (
                "expired token",
                Some(format!("Bearer {expired}")),
                "token expired",
            ),
            (
                "garbage token",
                Some("Bearer not-a-jwt".into()),
                "not a well-formed JWT",
            ),
        ];
        for (case, header, fragment) in cases {
            let status = call_with_authorization(header.as_deref()).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{case}");
            assert!(
                status.message().contains(fragment),
                "{case}: {:?}",
                status.message()
            );
            assert!(!status.message().contains(&token), "{case}: echoes token");
            assert!(!status.message().contains(&expired), "{case}: echoes token");
            let info = status.get_details_error_info().expect("ErrorInfo detail");
            assert_eq!(info.reason, "UNAUTHENTICATED", "{case}");
            assert_eq!(info.domain, "sluice", "{case}");
        }
    }

    #[test]
    fn a_tenant_token_for_anonymous_is_permission_denied() {
        let token = hs256(&json!({ "tenant_id": "anonymous", "exp": later() }));

        let status = call_with_authorization(Some(&format!("Bearer {token}"))).unwrap_err();

        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("\"anonymous\" is reserved"),
            "{:?}",
            status.message()
        );
        let info = status.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "PERMISSION_DENIED");
        // A platform admin whose home tenant is `anonymous` keeps every right.
        let admin = hs256(&json!({
            "tenant_id": "anonymous", "roles": ["platform-admin"], "exp": later()
        }));
        let anonymous = Some(TenantId::anonymous());
        assert_eq!(
            hs256_verifier().verify(&admin),
            Ok(TenantScope::platform_admin(anonymous.clone()))
        );
        let minted = mint_hs256(
            SECRET,
            Some("anonymous"),
            &[PLATFORM_ADMIN_ROLE.to_owned()],
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            hs256_verifier().verify(&minted),
            Ok(TenantScope::platform_admin(anonymous))
        );
    }

    #[test]
    fn minted_tokens_verify_and_bad_requests_are_refused() {
        let verifier = hs256_verifier();
        let admin = vec![PLATFORM_ADMIN_ROLE.to_owned()];
        let token = mint_hs256(SECRET, None, &admin, Duration::from_secs(60)).unwrap();
        assert_eq!(
            verifier.verify(&token),
            Ok(TenantScope::platform_admin(None))
        );
        let token = mint_hs256(SECRET, Some("acme"), &[], Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify(&token), Ok(acme()));

        let minute = Duration::from_secs(60);
        let refusals = [
            (
                "no tenant",
                mint_hs256(SECRET, None, &[], minute),
                "needs a tenant",
            ),
            (
                "bad tenant",
                mint_hs256(SECRET, Some("a b"), &[], minute),
                "tenant id is invalid",
            ),
            (
                "zero ttl",
                mint_hs256(SECRET, Some("acme"), &[], Duration::ZERO),
                "at least one second",
            ),
            (
                "empty secret",
                mint_hs256(b"", Some("acme"), &[], minute),
                "secret is empty",
            ),
            (
                "reserved tenant",
                mint_hs256(SECRET, Some("anonymous"), &[], minute),
                "\"anonymous\" is reserved",
            ),
        ];
        for (case, result, fragment) in refusals {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(fragment), "{case}: {message:?}");
        }
    }
}
