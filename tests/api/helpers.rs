//! The harness every admin-API test uses: [`spawn_app`] starts the real [`Application`] on port 0
//! against the test's own fresh, migrated PostgreSQL database, and returns a [`TestApp`] holding
//! its addresses, a gRPC client, a JWT minter and the database guard. Also small helpers to build
//! policies, attach bearer tokens, read rich error details and speak plain HTTP.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::Parser;
use rand::RngCore;
use sluice::{
    admin::auth::{PLATFORM_ADMIN_ROLE, mint_hs256},
    proto::sluice::admin::v1::{self as pb, policy_service_client::PolicyServiceClient},
    settings::{Cli, SecretString, Settings},
    startup::{Application, StartupError},
};
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::support::{self, TestDatabase};

/// How long a test waits for the server to stop after it was asked to.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Sluice for one test. Dropping it stops the server; [`TestApp::shutdown`] stops it and
/// waits for a clean exit.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// A client of `sluice.admin.v1.PolicyService` over one shared channel.
    pub client: PolicyServiceClient<Channel>,
    /// The channel `client` uses, for other services (health).
    pub channel: Channel,
    /// URL of the database the app uses.
    pub database_url: String,
    /// The HS256 secret tokens are minted with (configured on the server unless a test's
    /// `configure` removed it).
    hs256_secret: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartupError>>>,
    /// Kept alive for the app's lifetime; declared last so the server is told to stop first.
    database: Option<TestDatabase>,
}

/// Starts Sluice with default test settings on its own fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts Sluice on its own fresh database after `configure` adjusted the test settings
/// (e.g. `--default-window`, public-key JWT configuration).
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let database = support::fresh_database().await;
    let url = database.url.clone();
    try_spawn(url, Some(database), configure)
        .await
        .unwrap_or_else(|err| panic!("the application did not start: {err}"))
}

/// Starts Sluice on `database_url` (not owned by the app); returns why start-up failed, if it did.
pub async fn try_spawn_app_on(
    database_url: &str,
    configure: impl FnOnce(&mut Settings),
) -> Result<TestApp, StartupError> {
    try_spawn(database_url.to_owned(), None, configure).await
}

/// Test settings: both listeners on port 0 of 127.0.0.1, the given database, a random HS256
/// secret. Every optional setting is cleared after parsing, so the environment of whoever runs
/// the tests (`SLUICE_JWT_PUBLIC_KEYS`, `REDIS_URL`, …) cannot leak in.
pub fn test_settings(database_url: &str, hs256_secret: &str) -> Settings {
    // `--flag=value`: a random base64url secret may start with `-`.
    let cli = Cli::try_parse_from([
        "sluice".to_owned(),
        "--grpc-addr=127.0.0.1:0".to_owned(),
        "--http-addr=127.0.0.1:0".to_owned(),
        format!("--database-url={database_url}"),
        format!("--jwt-hs256-secret={hs256_secret}"),
        "--default-window=60".to_owned(),
    ])
    .unwrap_or_else(|err| panic!("test settings do not parse: {err}"));
    let mut settings = cli.settings;
    settings.jwt_hs256_secret_file = None;
    settings.jwt_public_keys = None;
    settings.jwt_issuer = None;
    settings.jwt_audience = None;
    settings.redis_url = None;
    settings.redis_password = None;
    settings
}

/// A random HS256 secret of 32 random bytes, base64url-encoded (43 characters).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn try_spawn(
    database_url: String,
    database: Option<TestDatabase>,
    configure: impl FnOnce(&mut Settings),
) -> Result<TestApp, StartupError> {
    init_test_logging();
    let hs256_secret = random_secret();
    let mut settings = test_settings(&database_url, &hs256_secret);
    configure(&mut settings);
    let application = Application::build(settings).await?;
    let grpc_addr = application.grpc_addr();
    let http_addr = application.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap_or_else(|err| panic!("bad endpoint {grpc_addr}: {err}"))
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(TestApp {
        grpc_addr,
        http_addr,
        client: PolicyServiceClient::new(channel.clone()),
        channel,
        database_url,
        hs256_secret,
        stop: Some(stop),
        server: Some(server),
        database,
    })
}

/// With `TEST_LOG` set, the app's logs go to the test output (captured unless `--nocapture`).
fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

impl TestApp {
    /// The HS256 secret this app's tokens are signed with.
    pub fn hs256_secret(&self) -> &str {
        &self.hs256_secret
    }

    /// A one-hour token scoped to `tenant`.
    pub fn token(&self, tenant: &str) -> String {
        self.token_with(Some(tenant), &[])
    }

    /// A one-hour platform-admin token with no tenant of its own.
    pub fn admin_token(&self) -> String {
        self.token_with(None, &[PLATFORM_ADMIN_ROLE])
    }

    /// A one-hour token with the given claims.
    pub fn token_with(&self, tenant: Option<&str>, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        mint_hs256(
            self.hs256_secret.as_bytes(),
            tenant,
            &roles,
            Duration::from_secs(3600),
        )
        .unwrap_or_else(|err| panic!("minting a test token failed: {err}"))
    }

    /// A one-hour HS256 token carrying exactly `claims` (plus `exp`), signed with this app's
    /// secret: for claims `sluice token` refuses to mint, such as a tenant-scoped `anonymous`.
    pub fn token_with_claims(&self, mut claims: serde_json::Value) -> String {
        claims["exp"] = (chrono::Utc::now().timestamp() + 3600).into();
        sign_hs256(self.hs256_secret.as_bytes(), &claims)
    }

    /// A fresh client on the app's channel.
    pub fn client(&self) -> PolicyServiceClient<Channel> {
        self.client.clone()
    }

    /// `CreatePolicy` as the holder of `token`.
    pub async fn create(&self, token: &str, policy: pb::Policy) -> Result<pb::Policy, Status> {
        let request = pb::CreatePolicyRequest {
            policy: Some(policy),
        };
        self.client()
            .create_policy(bearer(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `CreatePolicy` that must succeed.
    pub async fn create_ok(&self, token: &str, policy: pb::Policy) -> pb::Policy {
        let shown = format!("{policy:?}");
        self.create(token, policy)
            .await
            .unwrap_or_else(|status| panic!("creating {shown} failed: {status:?}"))
    }

    /// `GetPolicy` as the holder of `token`.
    pub async fn get(&self, token: &str, id: &str) -> Result<pb::Policy, Status> {
        let request = pb::GetPolicyRequest { id: id.to_owned() };
        self.client()
            .get_policy(bearer(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `UpdatePolicy` with `update_mask` = `paths` (no mask when empty).
    pub async fn update(
        &self,
        token: &str,
        policy: pb::Policy,
        paths: &[&str],
    ) -> Result<pb::Policy, Status> {
        let update_mask = (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        });
        let request = pb::UpdatePolicyRequest {
            policy: Some(policy),
            update_mask,
        };
        self.client()
            .update_policy(bearer(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `UpdatePolicy` of `max_requests` alone (named in the mask) on policy `id`.
    pub async fn set_max_requests(
        &self,
        token: &str,
        id: &str,
        max_requests: u32,
    ) -> Result<pb::Policy, Status> {
        let policy = pb::Policy {
            id: id.to_owned(),
            max_requests,
            ..Default::default()
        };
        self.update(token, policy, &["max_requests"]).await
    }

    /// `DeletePolicy`, with `etag` when not empty.
    pub async fn delete(&self, token: &str, id: &str, etag: &str) -> Result<(), Status> {
        let request = pb::DeletePolicyRequest {
            id: id.to_owned(),
            etag: etag.to_owned(),
        };
        self.client()
            .delete_policy(bearer(request, token))
            .await
            .map(|_| ())
    }

    /// One `ListPolicies` page.
    pub async fn list(
        &self,
        token: &str,
        tenant_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListPoliciesResponse, Status> {
        let request = pb::ListPoliciesRequest {
            tenant_id: tenant_id.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        };
        self.client()
            .list_policies(bearer(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every policy `token` sees with this filter, walking all pages of `page_size`.
    pub async fn list_all(&self, token: &str, tenant_id: &str, page_size: i32) -> Vec<pb::Policy> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        for _ in 0..10_000 {
            let page = self
                .list(token, tenant_id, page_size, &page_token)
                .await
                .unwrap_or_else(|status| panic!("listing failed: {status:?}"));
            all.extend(page.policies);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
        panic!("listing never reached its last page");
    }

    /// A direct connection to the app's database, for arranging what the API cannot.
    pub async fn database_connection(&self) -> PgConnection {
        PgConnection::connect(&self.database_url)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to the test database: {err}"))
    }

    /// The app's own database guard (`None` when spawned on a given URL).
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// Asks the server to shut down, without waiting.
    pub fn request_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the server task has ended.
    pub fn server_finished(&self) -> bool {
        self.server.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts the server down and waits (at most ten seconds) for it to stop; its result.
    pub async fn shutdown(mut self) -> Result<(), StartupError> {
        self.request_shutdown();
        let server = self
            .server
            .take()
            .expect("the server task is only taken here");
        match tokio::time::timeout(STOP_TIMEOUT, server).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => panic!("the server task failed: {join}"),
            Err(_) => panic!("the server did not stop within {STOP_TIMEOUT:?} of shutdown"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.request_shutdown();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// `claims` signed with HS256 under `secret`, exactly as given.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap_or_else(|err| panic!("signing HS256 claims failed: {err}"))
}

/// `message` with `authorization: Bearer <token>` metadata.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    with_authorization(message, &format!("Bearer {token}"))
}

/// `message` with the given raw `authorization` metadata value.
pub fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = value
        .parse()
        .unwrap_or_else(|err| panic!("{value:?} is not valid metadata: {err}"));
    request.metadata_mut().insert("authorization", value);
    request
}

/// A policy to create: `tenant`, `pattern`, `max_requests`, everything else left to defaults.
pub fn new_policy(tenant: &str, pattern: &str, max_requests: u32) -> pb::Policy {
    pb::Policy {
        tenant_id: tenant.to_owned(),
        endpoint_pattern: pattern.to_owned(),
        max_requests,
        ..Default::default()
    }
}

/// Asserts `status` has `code` and an `ErrorInfo` with `reason` in the `sluice` domain.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, reason: &str) {
    assert_eq!(
        status.code(),
        code,
        "expected {code:?} ({reason}), got {status:?}"
    );
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no google.rpc.ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "sluice", "{status:?}");
}

/// Unwraps the error of `result`, asserting its code and reason.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?} ({reason}), got Ok({value:?})"),
        Err(status) => {
            assert_status(&status, code, reason);
            status
        }
    }
}

/// The field names of the `google.rpc.BadRequest` violations in `status`, in order.
#[track_caller]
pub fn violation_fields(status: &Status) -> Vec<String> {
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no google.rpc.BadRequest in {status:?}"));
    bad_request
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// Path of a JWT key fixture under `tests/fixtures/jwt/`.
pub fn jwt_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

/// A settings override holding a secret, for `configure` closures.
pub fn secret(value: &str) -> SecretString {
    SecretString::new(value)
}

/// An HTTP/1.1 response: status code, headers and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` over a fresh HTTP/1.1 connection (`Connection: close`), read to the end. Chunked
/// bodies are returned undecoded; the tests only look for text in them.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP response"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            )
        })?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}
