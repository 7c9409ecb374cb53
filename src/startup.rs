//! Builds the [`Application`] from [`Settings`]: the policy store, the JWT verifier, the counter
//! (a Redis that does not answer yet does not stop start-up; one that refuses a setting does),
//! both listeners (bound at build time, so port 0 works for tests), the gRPC services, health,
//! reflection and the policy-refresh task; then runs it until a shutdown signal. Every
//! [`StartupError`] names the setting at fault.
//!
//! Shutdown order: health NOT_SERVING and `/readyz` 503 → the gRPC listener stops accepting →
//! drain in-flight calls (the HTTP listener still answers, so probes see the 503) → the HTTP
//! listener stops → stop background tasks.

use std::{net::SocketAddr, path::Path, str::FromStr, sync::Arc, time::Duration};

use sqlx::postgres::PgConnectOptions;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::{
    admin::{
        auth::{AuthConfigError, AuthInterceptor, JwtConfig, JwtVerifier},
        page_token::PageTokenCodec,
        service::{PolicyAdmin, PolicyChangeHook},
    },
    explain::Explainer,
    http::{CounterStore, Readiness, router},
    policy_refresh::PolicyRefresher,
    proto::{
        self,
        envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer,
        sluice::admin::v1::{
            explain_service_server::ExplainServiceServer,
            policy_service_server::PolicyServiceServer,
        },
    },
    ratelimit::{
        counter::{
            FirstConnect, InMemoryCounter, RedisCounter, RedisStartError, SlidingWindowCounter,
        },
        request::{DescriptorKeys, MAX_REQUEST_BYTES},
        service::{RateLimiter, RateLimiterConfig},
        snapshot::SharedSnapshot,
    },
    settings::{DatabaseKind, SecretString, Settings, SettingsError},
    store::{PolicyStore, deadline::DeadlineStore, postgres::PgPolicyStore},
    telemetry::{GrpcMetricsLayer, Metrics, error_chain},
};

/// How long an admin call waits for a database connection before answering UNAVAILABLE.
const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long any one store call may take in all (connection, queries, commit) before it is cut
/// off and answers UNAVAILABLE; a policy reload is bounded the same way.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the service could not start. Each message names the setting or resource at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("DATABASE_URL: {0}")]
    Database(String),
    #[error("{0}")]
    Jwt(#[from] AuthConfigError),
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `setting` is `REDIS_URL`, or `REDIS_PASSWORD` when that password was refused.
    #[error("{setting}: {reason}")]
    Redis {
        setting: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Serve(String),
}

/// The counter `REDIS_URL` selects, and how `/readyz` reports it.
pub struct OpenedCounter {
    pub counter: Arc<dyn SlidingWindowCounter>,
    pub store: CounterStore,
}

/// Seconds since the Unix epoch, for `sluice_policy_snapshot_timestamp_seconds`.
fn unix_now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The counter `REDIS_URL` selects: Redis when set, else in-process. A Redis that does not
/// answer yet does not stop start-up — checks answer per `SLUICE_FAILURE_MODE` until it does —
/// but a URL, password or certificate Redis refuses does. With Redis, registers
/// `sluice_redis_up` and the script-call series in `metrics`.
pub async fn open_counter(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<OpenedCounter, StartupError> {
    let Some(url) = &settings.redis_url else {
        tracing::warn!(
            counter = "in-process",
            max_keys = settings.memory_max_keys,
            "counters: in-process (REDIS_URL unset), at most {} (SLUICE_MEMORY_MAX_KEYS) — limits are per instance; set REDIS_URL to share them",
            settings.memory_max_keys
        );
        return Ok(OpenedCounter {
            counter: Arc::new(InMemoryCounter::new(settings.memory_max_keys)),
            store: CounterStore::InProcess,
        });
    };
    let password = settings.redis_password.as_ref().map(|p| p.expose());
    let (counter, first) = RedisCounter::start(
        url.expose(),
        password,
        settings.redis_pool_size as usize,
        &settings.redis_key_prefix,
    )
    .await
    .map_err(|err| StartupError::Redis {
        setting: match err {
            RedisStartError::Credentials(_) if password.is_some() => "REDIS_PASSWORD",
            _ => "REDIS_URL",
        },
        reason: err.to_string(),
    })?;
    // A command fred still holds after our deadline must not be sent later and counted.
    counter.set_command_timeout(settings.redis_timeout());
    counter.report_calls_to(metrics.register_redis_calls());
    let health = counter.health();
    health.report_to(metrics.register_redis_up());
    match first {
        FirstConnect::Connected => tracing::info!(
            counter = "redis",
            redis = "up",
            prefix = %settings.redis_key_prefix,
            "counters: Redis (shared by every instance on it)"
        ),
        FirstConnect::Unreachable(err) => tracing::warn!(
            counter = "redis",
            redis = "connecting",
            prefix = %settings.redis_key_prefix,
            failure_mode = ?settings.failure_mode,
            error = %error_chain(&err),
            "counters: Redis (shared by every instance on it), not answering yet: checks answer per SLUICE_FAILURE_MODE until it does"
        ),
    }
    Ok(OpenedCounter {
        counter: Arc::new(counter),
        store: CounterStore::Redis(health),
    })
}

/// The policy store chosen by `DATABASE_URL`, with what the refresh task needs of it.
pub struct OpenedStore {
    pub store: Arc<dyn PolicyStore>,
    /// PostgreSQL's pool, for LISTEN/NOTIFY.
    pub listen: Option<sqlx::PgPool>,
    pub kind: DatabaseKind,
}

/// Opens the store `DATABASE_URL` names; with `migrate`, applies pending migrations.
pub async fn open_store(settings: &Settings, migrate: bool) -> Result<OpenedStore, StartupError> {
    let kind = settings.database_kind()?;
    match &kind {
        DatabaseKind::Postgres => {
            let options =
                PgConnectOptions::from_str(settings.database_url.expose()).map_err(|err| {
                    StartupError::Database(format!("not a valid PostgreSQL URL: {err}"))
                })?;
            if migrate {
                first_connection(&options).await?;
            }
            let store = PgPolicyStore::connect_lazy(options, DB_ACQUIRE_TIMEOUT)
                .with_max_policies_per_tenant(settings.max_policies_per_tenant);
            if migrate {
                store.migrate().await.map_err(|err| {
                    StartupError::Database(format!(
                        "applying migrations failed: {}",
                        error_chain(&err)
                    ))
                })?;
            }
            let listen = Some(store.pool().clone());
            tracing::info!(store = "postgres", "policy store: PostgreSQL");
            Ok(OpenedStore {
                store: Arc::new(store),
                listen,
                kind,
            })
        }
        DatabaseKind::Sqlite { path } => {
            let store = crate::store::sqlite::SqlitePolicyStore::open(path, DB_ACQUIRE_TIMEOUT)
                .await
                .map_err(|err| {
                    StartupError::Database(format!(
                        "cannot open the SQLite database {}: {}",
                        path.display(),
                        error_chain(&err)
                    ))
                })?
                .with_max_policies_per_tenant(settings.max_policies_per_tenant);
            if migrate {
                store.migrate().await.map_err(|err| {
                    StartupError::Database(format!(
                        "applying migrations to {} failed: {}",
                        path.display(),
                        error_chain(&err)
                    ))
                })?;
            }
            tracing::info!(
                store = "sqlite",
                "policy store: SQLite at {}",
                path.display()
            );
            Ok(OpenedStore {
                store: Arc::new(store),
                listen: None,
                kind,
            })
        }
    }
}

/// One direct connection before the pool's first use: a pool that cannot connect only says it
/// timed out, a connection says why (refused, no such database, password refused).
async fn first_connection(options: &PgConnectOptions) -> Result<(), StartupError> {
    use sqlx::Connection;
    match tokio::time::timeout(
        DB_ACQUIRE_TIMEOUT,
        sqlx::PgConnection::connect_with(options),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(err)) => Err(StartupError::Database(format!(
            "cannot connect: {}",
            error_chain(&err)
        ))),
        Err(_) => Err(StartupError::Database(format!(
            "cannot connect: no answer within {} s",
            DB_ACQUIRE_TIMEOUT.as_secs()
        ))),
    }
}

/// File name of the generated HS256 secret kept beside an SQLite database.
pub const GENERATED_SECRET_FILE: &str = "sluice.secret";

/// The JWT verifier configuration. With no key configured: on SQLite, a random HS256 secret is
/// created once in `sluice.secret` beside the database (mode 0600); on PostgreSQL, start-up stops.
pub fn jwt_config(settings: &Settings, kind: &DatabaseKind) -> Result<JwtConfig, StartupError> {
    let mut secret = settings.jwt_hs256_secret()?;
    if secret.is_none() && settings.jwt_public_keys.is_none() {
        match kind {
            DatabaseKind::Sqlite { path } => {
                secret = Some(generated_secret(path)?);
            }
            DatabaseKind::Postgres => {
                return Err(SettingsError::Invalid {
                    name: "SLUICE_JWT_HS256_SECRET",
                    reason: "no JWT key configured; with PostgreSQL the admin API never runs \
                             unauthenticated: set SLUICE_JWT_HS256_SECRET, \
                             SLUICE_JWT_HS256_SECRET_FILE or SLUICE_JWT_PUBLIC_KEYS"
                        .into(),
                }
                .into());
            }
        }
    }
    Ok(JwtConfig {
        hs256_secret: secret.map(|s| s.expose().as_bytes().to_vec()),
        public_keys_path: settings.jwt_public_keys.clone(),
        issuer: settings.jwt_issuer.clone(),
        audience: settings.jwt_audience.clone(),
    })
}

/// Reads, or on first use creates, the HS256 secret beside the SQLite database at `db_path`.
fn generated_secret(db_path: &Path) -> Result<SecretString, StartupError> {
    let dir = db_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = dir.join(GENERATED_SECRET_FILE);
    if path.exists() {
        return Ok(crate::settings::read_secret_file(
            "SLUICE_JWT_HS256_SECRET_FILE",
            &path,
        )?);
    }
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private_file(&path, &secret).map_err(|err| SettingsError::Invalid {
        name: "SLUICE_JWT_HS256_SECRET_FILE",
        reason: format!("cannot create {}: {err}", path.display()),
    })?;
    tracing::info!(path = %path.display(), "no JWT key configured: created a random HS256 secret; `sluice token` uses it");
    Ok(SecretString::new(secret))
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

/// The key that signs `ListPolicies` page tokens: a random secret kept in the database and
/// shared by every instance on it (the first instance to start creates it). Not derived from the
/// JWT configuration, whose public keys anyone may hold.
async fn page_token_key(store: &dyn PolicyStore) -> Result<Vec<u8>, StartupError> {
    use rand::RngCore;
    let mut candidate = [0u8; 32];
    rand::rng().fill_bytes(&mut candidate);
    store
        .shared_secret("page_tokens", &candidate)
        .await
        .map_err(|err| {
            StartupError::Database(format!(
                "cannot read or create the page-token secret: {}",
                error_chain(&err)
            ))
        })
}

/// A built, bound, not yet running Sluice.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    admin: PolicyAdmin,
    rate_limiter: Arc<RateLimiter>,
    verifier: Arc<JwtVerifier>,
    metrics: Metrics,
    readiness: Readiness,
    counter_store: CounterStore,
    refresher: Arc<PolicyRefresher>,
    shutdown_grace: Duration,
}

impl Application {
    /// Opens the store (applying migrations), loads the JWT keys and binds both listeners.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Keys first: a deployment that would refuse to start touches no database.
        let jwt = jwt_config(&settings, &settings.database_kind()?)?;
        let verifier = Arc::new(JwtVerifier::new(jwt)?);
        let opened = open_store(&settings, true).await?;
        let store: Arc<dyn PolicyStore> =
            Arc::new(DeadlineStore::new(opened.store, STORE_CALL_TIMEOUT));
        let page_tokens = PageTokenCodec::new(&page_token_key(store.as_ref()).await?);
        let metrics = Metrics::with_top_tenants(usize::from(settings.metrics_top_tenants));
        let counters = open_counter(&settings, &metrics).await?;
        let snapshot = Arc::new(SharedSnapshot::new());
        let rate_limiter = Arc::new(RateLimiter::new(
            snapshot.clone(),
            counters.counter,
            RateLimiterConfig {
                keys: DescriptorKeys {
                    tenant: settings.tenant_key.clone(),
                    path: settings.path_key.clone(),
                    method: settings.method_key.clone(),
                },
                deadline: settings.redis_timeout(),
                failure_mode: settings.failure_mode,
            },
            metrics.clone(),
        ));
        let policies_gauge = metrics.policies.clone();
        let snapshot_timestamp = metrics.policy_snapshot_timestamp.clone();
        let apply: crate::policy_refresh::ApplyPolicies = Arc::new(move |update| {
            use crate::policy_refresh::{PolicyChange, SnapshotUpdate};
            let count = match update {
                SnapshotUpdate::LoadingAll => return snapshot.begin_full_load(),
                SnapshotUpdate::LoadedAll(policies) => {
                    let count = snapshot.finish_full_load(policies);
                    snapshot_timestamp.set(unix_now_seconds());
                    count
                }
                SnapshotUpdate::Changed(PolicyChange::Upserted(policy)) => snapshot.upsert(policy),
                SnapshotUpdate::Changed(PolicyChange::Removed(id)) => snapshot.remove(id),
            };
            policies_gauge.set(count as i64);
        });
        let refresher = Arc::new(
            PolicyRefresher::new(store.clone(), opened.listen, apply)
                .count_errors_in(metrics.policy_reload_errors.clone()),
        );
        let local_refresh = refresher.clone();
        let on_change: PolicyChangeHook =
            Arc::new(move |change| local_refresh.apply_own_change(change));
        let admin = PolicyAdmin::new(
            store,
            settings.default_window_seconds,
            page_tokens,
            on_change,
        );
        let grpc_listener = bind("SLUICE_GRPC_ADDR", settings.grpc_addr).await?;
        let http_listener = bind("SLUICE_HTTP_ADDR", settings.http_addr).await?;
        Ok(Self {
            grpc_addr: grpc_listener.local_addr().unwrap_or(settings.grpc_addr),
            http_addr: http_listener.local_addr().unwrap_or(settings.http_addr),
            grpc_listener,
            http_listener,
            admin,
            rate_limiter,
            verifier,
            readiness: Readiness::reporting_to(metrics.ready.clone()),
            metrics,
            counter_store: counters.store,
            refresher,
            shutdown_grace: settings.shutdown_grace(),
        })
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` completes, then shuts down in order.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<PolicyServiceServer<PolicyAdmin>>()
            .await;
        health
            .set_serving::<RateLimitServiceServer<RateLimiter>>()
            .await;
        health.set_service_status("", ServingStatus::Serving).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|err| StartupError::Serve(format!("reflection: {err}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|err| StartupError::Serve(format!("reflection: {err}")))?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let readiness = self.readiness.clone();
        match self.refresher.load_once().await {
            Ok(count) => {
                tracing::info!(policies = count, "policies loaded");
                readiness.set(true);
            }
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "first policy load failed; /readyz stays 503 until it succeeds")
            }
        }
        let refresh_readiness = readiness.clone();
        let refresher = self.refresher;
        let refresh_task = tokio::spawn(async move {
            if !refresh_readiness.is_ready() {
                // Keep trying until the first load succeeds, then become ready.
                let mut stop = stop_rx.clone();
                loop {
                    if refresher.load_once().await.is_ok() {
                        refresh_readiness.set(true);
                        break;
                    }
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
            refresher.run(stop_rx).await;
        });
        // OTLP metrics, when the standard variables ask for them: the same series as /metrics.
        let otlp_metrics = crate::otlp_metrics::OtlpMetricsConfig::from_env(|name| {
            std::env::var(name).ok()
        })
        .map(|config| {
            tracing::info!(endpoint = %config.endpoint, interval_ms = config.interval.as_millis() as u64, "metrics: also exported over OTLP");
            tokio::spawn(crate::otlp_metrics::run(
                config,
                self.metrics.clone(),
                stop_tx.subscribe(),
            ))
        });

        // The shutdown sequence: first tell load balancers, then stop the servers.
        let (servers_stop_tx, servers_stop_rx) = watch::channel(false);
        let servers_stop_rx_for_grace = servers_stop_rx.clone();
        let health_for_shutdown = health.clone();
        let readiness_for_shutdown = readiness.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested: health NOT_SERVING, draining in-flight calls");
            readiness_for_shutdown.set(false);
            health_for_shutdown
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health_for_shutdown
                .set_not_serving::<PolicyServiceServer<PolicyAdmin>>()
                .await;
            health_for_shutdown
                .set_not_serving::<RateLimitServiceServer<RateLimiter>>()
                .await;
            let _ = servers_stop_tx.send(true);
        });

        let admin = PolicyServiceServer::with_interceptor(
            self.admin,
            AuthInterceptor::new(self.verifier.clone()),
        );
        let explain = ExplainServiceServer::with_interceptor(
            Explainer::new(self.rate_limiter.clone()),
            AuthInterceptor::new(self.verifier.clone()),
        );
        let grpc = tonic::transport::Server::builder()
            .layer(GrpcMetricsLayer::new(self.metrics.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(admin)
            .add_service(explain)
            .add_service(
                RateLimitServiceServer::from_arc(self.rate_limiter)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(
                // tonic applies its own TCP_NODELAY only to listeners it binds itself; without it
                // Nagle's algorithm holds small responses back behind delayed ACKs (~40 ms tails).
                TcpIncoming::from(self.grpc_listener).with_nodelay(Some(true)),
                wait_for(servers_stop_rx),
            );
        // The HTTP listener outlives the gRPC drain: while calls in flight finish, `/readyz`
        // keeps answering 503 to the probes that take this instance out of rotation.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let http = axum::serve(
            self.http_listener,
            router(self.metrics.clone(), readiness, self.counter_store),
        )
        .with_graceful_shutdown(wait_for(http_stop_rx));
        tracing::info!(grpc = %self.grpc_addr, http = %self.http_addr, "sluice is serving");
        let grpc = async move {
            let result = grpc.await;
            let _ = http_stop_tx.send(true);
            result
        };

        // Drain, but not forever: a long-lived stream (a client's health Watch, say) never ends
        // by itself, so after the grace period the remaining connections are closed.
        let serving = async { tokio::join!(grpc, async { http.await }) };
        let grace = self.shutdown_grace;
        let grace_over = async move {
            wait_for(servers_stop_rx_for_grace).await;
            tokio::time::sleep(grace).await;
        };
        let (grpc_result, http_result) = tokio::select! {
            results = serving => results,
            () = grace_over => {
                tracing::warn!(grace_seconds = grace.as_secs(), "shutdown grace period over; closing the connections still open");
                (Ok(()), Ok(()))
            }
        };
        let _ = stop_tx.send(true);
        let _ = refresh_task.await;
        if let Some(export) = otlp_metrics {
            // One last export of the final values, but shutdown never waits long on a collector.
            if tokio::time::timeout(FINAL_EXPORT_WAIT, export)
                .await
                .is_err()
            {
                tracing::warn!(
                    "the last OTLP metrics export did not finish in time; exiting without it"
                );
            }
        }
        grpc_result
            .map_err(|err| StartupError::Serve(format!("gRPC server: {}", error_chain(&err))))?;
        http_result.map_err(|err| StartupError::Serve(format!("HTTP server: {err}")))?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// How long shutdown waits for the last OTLP metrics export.
const FINAL_EXPORT_WAIT: Duration = Duration::from_secs(2);

async fn wait_for(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { name, addr, source })
}

/// Mints an HS256 token for `sluice token` from the configured (or generated) secret.
pub fn mint_token(
    settings: &Settings,
    args: &crate::settings::TokenArgs,
) -> Result<String, StartupError> {
    let kind = settings.database_kind()?;
    let config = jwt_config(settings, &kind)?;
    let secret = config.hs256_secret.ok_or_else(|| SettingsError::Invalid {
        name: "SLUICE_JWT_HS256_SECRET",
        reason: "`sluice token` signs with the HS256 secret, and none is configured \
                 (tokens for public-key setups come from your identity provider)"
            .into(),
    })?;
    let is_admin = args
        .roles
        .iter()
        .any(|r| r == crate::admin::auth::PLATFORM_ADMIN_ROLE);
    if let Some(tenant) = &args.tenant {
        crate::domain::TenantId::parse(tenant).map_err(|reason| SettingsError::Invalid {
            name: "--tenant",
            reason,
        })?;
    } else if !is_admin {
        return Err(SettingsError::Invalid {
            name: "--tenant",
            reason: "is required unless --role platform-admin is given".into(),
        }
        .into());
    }
    let request = crate::admin::auth::MintRequest {
        tenant: args.tenant.as_deref(),
        roles: &args.roles,
        ttl: args.ttl,
        issuer: config.issuer.as_deref(),
        audience: config.audience.as_deref(),
    };
    crate::admin::auth::mint_hs256_with(&secret, &request)
        .map_err(|err| StartupError::Serve(format!("minting the token failed: {err}")))
}
