//! An axum service that limits each tenant with Sluice: a JWT auth layer verifies the bearer
//! token and puts its claims into the request's extensions; the rate-limit layer behind it reads the
//! tenant from those claims (never from a header a client could forge), with the path and method.
//! Walkthrough: `docs/tower-layer.md`.
//!
//! ```text
//! cargo run -p sluice-tower --example axum_jwt
//! ```
//!
//! Environment: `EXAMPLE_ADDR` (127.0.0.1:3000), `SLUICE_URL` (http://127.0.0.1:8081) and
//! `EXAMPLE_JWT_SECRET_FILE` (`sluice.secret`: the HS256 secret Sluice's embedded default creates,
//! so `sluice token --tenant acme` mints tokens this service accepts).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, Request, State},
    http::{HeaderName, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sluice_tower::{
    Cost, DEFAULT_DEADLINE, DescriptorTemplate, EntrySource, FailureMode, RateLimitLayer,
    lazy_channel,
};
use tonic::transport::Channel;
use tower::ServiceBuilder;

/// The claims this service trusts once the token is verified.
#[derive(Clone, Debug, Deserialize)]
pub struct Claims {
    pub tenant_id: String,
}

/// The service's routes: `/healthz` outside the limits, everything under `/v1` behind the token
/// check and then the rate limit, which waits at most `deadline` for Sluice.
pub fn router(sluice: Channel, jwt_secret: &[u8], deadline: Duration) -> Router {
    let verifier = Arc::new(Verifier::hs256(jwt_secret));
    let rate_limit = RateLimitLayer::builder(
        sluice,
        "example",
        DescriptorTemplate::new()
            .tenant(EntrySource::extension(|claims: &Claims| {
                Some(claims.tenant_id.clone())
            }))
            .path()
            .method(),
    )
    // A batch of N items costs N hits.
    .cost(Cost::from_header(HeaderName::from_static("x-batch-size")))
    .deadline(deadline)
    .failure_mode(FailureMode::Open)
    .build();

    let api = Router::new()
        .route("/v1/items/{id}", get(item))
        .route("/v1/batch", post(batch))
        // ServiceBuilder runs its layers top to bottom: authenticate, then rate-limit.
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(verifier, authenticate))
                .layer(rate_limit),
        );
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
}

async fn item(Path(id): Path<String>) -> String {
    format!("item {id}\n")
}

async fn batch() -> &'static str {
    "batch accepted\n"
}

/// Verifies HS256 bearer tokens.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    fn hs256(secret: &[u8]) -> Verifier {
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation: Validation::new(Algorithm::HS256),
        }
    }
}

/// The auth layer: 401 without a valid token; with one, its claims go into the extensions.
async fn authenticate(
    State(verifier): State<Arc<Verifier>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = token else {
        return (StatusCode::UNAUTHORIZED, "missing bearer token\n").into_response();
    };
    match jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation) {
        Ok(data) => {
            request.extensions_mut().insert(data.claims);
            next.run(request).await
        }
        Err(_) => (StatusCode::UNAUTHORIZED, "invalid token\n").into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr: SocketAddr = std::env::var("EXAMPLE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let sluice_url = std::env::var("SLUICE_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let secret_file =
        std::env::var("EXAMPLE_JWT_SECRET_FILE").unwrap_or_else(|_| "sluice.secret".into());
    let secret = std::fs::read_to_string(&secret_file)
        .map_err(|err| format!("cannot read the JWT secret from {secret_file}: {err}"))?;

    let app = router(
        lazy_channel(&sluice_url)?,
        secret.trim_end().as_bytes(),
        DEFAULT_DEADLINE,
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, sluice = %sluice_url, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
