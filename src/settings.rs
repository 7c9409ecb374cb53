//! Typed settings: every setting of SPEC §1 as a flag with its environment variable, parsed and
//! checked at start-up so a missing or wrong one stops the process with one line naming it.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use sqlx::sqlite::SqliteConnectOptions;

use crate::domain::policy::MaxPoliciesPerTenant;

/// A secret string that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The `sluice` command line.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Exact sliding-window rate limiting for Envoy, with per-tenant policies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Mint a JWT from the configured HS256 secret, for local use with grpcurl.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tenant the token acts for (`tenant_id` claim).
    #[arg(long)]
    pub tenant: Option<String>,
    /// A role to grant (repeatable), e.g. `platform-admin`.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// How long the token lives, e.g. `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// What a counter failure or a missed deadline answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureMode {
    /// Allow the request (and count it as `fail_open`).
    Open,
    /// Answer gRPC UNAVAILABLE; Envoy's `failure_mode_deny` then decides.
    Unavailable,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of the service.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// gRPC listener: RateLimitService v3, PolicyService, health, reflection.
    #[arg(
        long,
        env = "SLUICE_GRPC_ADDR",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub grpc_addr: SocketAddr,

    /// HTTP listener: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "SLUICE_HTTP_ADDR",
        default_value = "127.0.0.1:9090",
        global = true
    )]
    pub http_addr: SocketAddr,

    /// `postgres://…` in production; `sqlite://…` is the embedded default (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://sluice.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: SecretString,

    /// `redis://`, `rediss://` (TLS) or a Redis Cluster URL; unset: in-process counters.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, global = true)]
    pub redis_url: Option<SecretString>,

    /// Overrides the password in REDIS_URL.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true, global = true)]
    pub redis_password: Option<SecretString>,

    /// Deadline in milliseconds for the whole counter step of one ShouldRateLimit.
    #[arg(long = "redis-timeout-ms", env = "RATE_LIMIT_REDIS_TIMEOUT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000), global = true)]
    pub redis_timeout_ms: u64,

    /// Prefix of every Redis key Sluice writes (keys then carry a `{tenant}` hash tag).
    #[arg(long, env = "SLUICE_REDIS_KEY_PREFIX", default_value = "sluice:", value_parser = parse_key_prefix, global = true)]
    pub redis_key_prefix: String,

    /// Connections in the Redis pool.
    #[arg(long, env = "SLUICE_REDIS_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub redis_pool_size: u32,

    /// `window_seconds` of a created policy that does not give one.
    #[arg(long = "default-window", env = "RATE_LIMIT_DEFAULT_WINDOW", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=2_678_400), global = true)]
    pub default_window_seconds: u32,

    /// Most policies one tenant (and `*`) may hold, enabled or not; over it CreatePolicy is
    /// RESOURCE_EXHAUSTED with reason RATE_POLICY_LIMIT.
    #[arg(long, env = "SLUICE_MAX_POLICIES_PER_TENANT", default_value_t = MaxPoliciesPerTenant::default(), global = true)]
    pub max_policies_per_tenant: MaxPoliciesPerTenant,

    /// What a counter failure or deadline gives: allow (`open`) or gRPC UNAVAILABLE.
    #[arg(
        long,
        env = "SLUICE_FAILURE_MODE",
        value_enum,
        default_value = "open",
        global = true
    )]
    pub failure_mode: FailureMode,

    /// Seconds that shutdown waits for in-flight calls and open streams (e.g. health Watch)
    /// before closing the remaining connections; keep it under the orchestrator's kill timeout.
    #[arg(long = "shutdown-grace-seconds", env = "SLUICE_SHUTDOWN_GRACE_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3_600), global = true)]
    pub shutdown_grace_seconds: u64,

    /// Shared secret for HS256 tokens.
    #[arg(
        long = "jwt-hs256-secret",
        env = "SLUICE_JWT_HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_hs256_secret: Option<SecretString>,

    /// File holding the HS256 shared secret.
    #[arg(
        long = "jwt-hs256-secret-file",
        env = "SLUICE_JWT_HS256_SECRET_FILE",
        global = true
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// A PEM public key or a JWKS file (RS256/ES256/EdDSA).
    #[arg(
        long = "jwt-public-keys",
        env = "SLUICE_JWT_PUBLIC_KEYS",
        global = true
    )]
    pub jwt_public_keys: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long = "jwt-issuer", env = "SLUICE_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long = "jwt-audience", env = "SLUICE_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Descriptor entry key naming the tenant.
    #[arg(
        long,
        env = "SLUICE_TENANT_KEY",
        default_value = "tenant_id",
        global = true
    )]
    pub tenant_key: String,

    /// Descriptor entry key naming the request path.
    #[arg(long, env = "SLUICE_PATH_KEY", default_value = "path", global = true)]
    pub path_key: String,

    /// Descriptor entry key naming the HTTP method.
    #[arg(
        long,
        env = "SLUICE_METHOD_KEY",
        default_value = "method",
        global = true
    )]
    pub method_key: String,

    /// Most counters the in-process counter (no REDIS_URL) tracks at once; at the cap a check that
    /// needs a new counter fails per SLUICE_FAILURE_MODE until expired counters are reclaimed.
    #[arg(long, env = "SLUICE_MEMORY_MAX_KEYS", default_value_t = DEFAULT_MEMORY_MAX_KEYS, value_parser = parse_max_keys, global = true)]
    pub memory_max_keys: usize,

    /// Tenants with their own `sluice_tenant_checks_total` series, the busiest by traffic; every
    /// other tenant counts under `tenant="other"`. 0 puts every tenant there.
    #[arg(long, env = "SLUICE_METRICS_TOP_TENANTS", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=1_000), global = true)]
    pub metrics_top_tenants: u16,

    /// `text` (default on a terminal) or `json` (default otherwise); levels come from RUST_LOG.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
}

/// A setting that is present but unusable, naming it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Which policy store `DATABASE_URL` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Sqlite { path: PathBuf },
}

impl Settings {
    /// Settings with every default, as `sluice serve` with no flags and no environment would have.
    pub fn defaults() -> Self {
        Cli::parse_from(["sluice"]).settings
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// Which store the database URL names. An SQLite URL is read exactly as sqlx reads it
    /// (`SqliteConnectOptions::from_str`): `sqlite://` (or `sqlite:`) is removed and the
    /// rest up to `?` is the file path, so `sqlite://sluice.db` is relative to the working
    /// directory and `sqlite:///var/lib/sluice/p.db` (or `sqlite:////var/…`) is absolute.
    pub fn database_kind(&self) -> Result<DatabaseKind, SettingsError> {
        let url = self.database_url.expose();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseKind::Postgres);
        }
        if url.starts_with("sqlite:") {
            return sqlite_path(url).map(|path| DatabaseKind::Sqlite { path });
        }
        Err(SettingsError::Invalid {
            name: "DATABASE_URL",
            reason: "must start with postgres://, postgresql:// or sqlite://".into(),
        })
    }

    /// The HS256 secret from `SLUICE_JWT_HS256_SECRET` or the file `SLUICE_JWT_HS256_SECRET_FILE`.
    pub fn jwt_hs256_secret(&self) -> Result<Option<SecretString>, SettingsError> {
        match (&self.jwt_hs256_secret, &self.jwt_hs256_secret_file) {
            (Some(_), Some(_)) => Err(SettingsError::Invalid {
                name: "SLUICE_JWT_HS256_SECRET_FILE",
                reason:
                    "set either SLUICE_JWT_HS256_SECRET or SLUICE_JWT_HS256_SECRET_FILE, not both"
                        .into(),
            }),
            (Some(secret), None) => {
                check_secret("SLUICE_JWT_HS256_SECRET", secret.clone()).map(Some)
            }
            (None, Some(path)) => read_secret_file("SLUICE_JWT_HS256_SECRET_FILE", path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Shortest HS256 secret accepted: 32 bytes, the size of the HMAC-SHA256 output (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_LEN: usize = 32;

fn check_secret(name: &'static str, secret: SecretString) -> Result<SecretString, SettingsError> {
    if secret.expose().len() < MIN_HS256_SECRET_LEN {
        return Err(SettingsError::Invalid {
            name,
            reason: format!(
                "must be at least {MIN_HS256_SECRET_LEN} bytes (got {})",
                secret.expose().len()
            ),
        });
    }
    Ok(secret)
}

/// Reads a secret file, trimming a trailing newline.
pub fn read_secret_file(name: &'static str, path: &Path) -> Result<SecretString, SettingsError> {
    let raw = std::fs::read_to_string(path).map_err(|err| SettingsError::Invalid {
        name,
        reason: format!("cannot read {}: {err}", path.display()),
    })?;
    check_secret(name, SecretString::new(raw.trim_end_matches(['\r', '\n'])))
}

/// The file an `sqlite:` URL names, parsed by sqlx itself so Sluice and sqlx never disagree.
/// Refused: no file (in-memory), and options that would stop Sluice writing its policies.
fn sqlite_path(url: &str) -> Result<PathBuf, SettingsError> {
    let invalid = |reason: String| SettingsError::Invalid {
        name: "DATABASE_URL",
        reason,
    };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|err| invalid(format!("not a valid SQLite URL: {err}")))?;
    let query = url.split_once('?').map_or("", |(_, query)| query);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if matches!(
            pair,
            "mode=memory" | "mode=ro" | "immutable=true" | "immutable=1"
        ) {
            return Err(invalid(format!(
                "{pair} is not supported: Sluice keeps its policies in a file it writes"
            )));
        }
    }
    let path = options.get_filename();
    // sqlx names an in-memory database `file:sqlx-in-memory-<n>`.
    if path.as_os_str().is_empty() || path.to_string_lossy().starts_with("file:sqlx-in-memory-") {
        return Err(invalid(
            "a sqlite URL must name a file, e.g. sqlite://sluice.db".into(),
        ));
    }
    // `sqlite:////var/x.db` leaves `//var/x.db`, the same file as `/var/x.db`: say it plainly.
    Ok(path.components().collect())
}

/// Default of `SLUICE_MEMORY_MAX_KEYS`.
pub const DEFAULT_MEMORY_MAX_KEYS: usize = 1_000_000;

fn parse_max_keys(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(keys) => Ok(keys),
        Err(_) => Err(format!("{raw:?} is not a whole number of keys")),
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let duration = if raw.chars().all(|c| c.is_ascii_digit()) {
        raw.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())?
    } else {
        humantime::parse_duration(raw).map_err(|e| format!("{e} (try 90s, 15m, 1h or 7d)"))?
    };
    if duration.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(duration)
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    if raw.contains(['{', '}']) {
        return Err("must not contain '{' or '}': keys add their own {tenant} hash tag".into());
    }
    if raw.len() > 128 {
        return Err("must be at most 128 characters".into());
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::defaults();
        assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(s.database_url.expose(), "sqlite://sluice.db");
        assert_eq!(s.redis_timeout_ms, 50);
        assert_eq!(s.default_window_seconds, 60);
        assert_eq!(s.failure_mode, FailureMode::Open);
        assert_eq!(
            (
                s.tenant_key.as_str(),
                s.path_key.as_str(),
                s.method_key.as_str()
            ),
            ("tenant_id", "path", "method")
        );
        assert!(s.redis_url.is_none());
        assert_eq!(s.memory_max_keys, 1_000_000);
        assert_eq!(s.max_policies_per_tenant.get(), 1_000);
        assert_eq!(s.metrics_top_tenants, 20);
    }

    #[test]
    fn sqlite_errors_name_database_url() {
        for url in [
            "sqlite::memory:",
            "sqlite://x.db?mode=ro",
            "sqlite://x.db?colour=blue",
        ] {
            let cli = parse(&["--database-url", url]).unwrap();
            let err = cli.settings.database_kind().unwrap_err().to_string();
            assert!(err.starts_with("DATABASE_URL: "), "{url}: {err}");
        }
    }

    #[test]
    fn database_kind_follows_the_url_scheme() {
        let cases = [
            ("postgres://u@h/db", Some(DatabaseKind::Postgres)),
            ("postgresql://u@h/db", Some(DatabaseKind::Postgres)),
            (
                "sqlite://sluice.db",
                Some(DatabaseKind::Sqlite {
                    path: "sluice.db".into(),
                }),
            ),
            (
                "sqlite:///var/lib/sluice/p.db?mode=rwc",
                Some(DatabaseKind::Sqlite {
                    path: "/var/lib/sluice/p.db".into(),
                }),
            ),
            // Four slashes: still the absolute /var/lib/sluice/p.db, never var/lib/… relative.
            (
                "sqlite:////var/lib/sluice/p.db",
                Some(DatabaseKind::Sqlite {
                    path: "/var/lib/sluice/p.db".into(),
                }),
            ),
            (
                "sqlite://data/sluice.db",
                Some(DatabaseKind::Sqlite {
                    path: "data/sluice.db".into(),
                }),
            ),
            (
                "sqlite:sluice.db",
                Some(DatabaseKind::Sqlite {
                    path: "sluice.db".into(),
                }),
            ),
            (
                "sqlite://my%20policies.db",
                Some(DatabaseKind::Sqlite {
                    path: "my policies.db".into(),
                }),
            ),
            ("mysql://h/db", None),
            ("sqlite://", None),
            ("sqlite::memory:", None),
            ("sqlite://:memory:", None),
            ("sqlite://x.db?mode=memory", None),
            ("sqlite://x.db?mode=ro", None),
            ("sqlite://x.db?colour=blue", None),
        ];
        for (url, expected) in cases {
            let cli = parse(&["--database-url", url]).unwrap();
            assert_eq!(cli.settings.database_kind().ok(), expected, "{url}");
        }
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (args, needle) in [
            (&["--redis-timeout-ms", "0"][..], "--redis-timeout-ms"),
            (&["--failure-mode", "closed"][..], "--failure-mode"),
            (&["--grpc-addr", "nope"][..], "--grpc-addr"),
            (&["--redis-key-prefix", "a{b}"][..], "--redis-key-prefix"),
            (&["token", "--ttl", "soon"][..], "--ttl"),
            (&["--memory-max-keys", "0"][..], "--memory-max-keys"),
            (&["--memory-max-keys", "many"][..], "--memory-max-keys"),
            (
                &["--max-policies-per-tenant", "0"][..],
                "--max-policies-per-tenant",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn token_ttl_accepts_seconds_and_units() {
        for (raw, secs) in [("90", 90), ("15m", 900), ("1h", 3600), ("7d", 604_800)] {
            let cli = parse(&["token", "--tenant", "acme", "--ttl", raw]).unwrap();
            match cli.command {
                Some(Command::Token(args)) => assert_eq!(args.ttl, Duration::from_secs(secs)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn secrets_never_print() {
        let cli = parse(&[
            "--jwt-hs256-secret",
            "super-secret-value-that-is-32-bytes-long",
        ])
        .unwrap();
        let shown = format!("{:?}", cli.settings);
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn short_or_doubled_secrets_are_refused() {
        let cli = parse(&["--jwt-hs256-secret", "short"]).unwrap();
        let err = cli.settings.jwt_hs256_secret().unwrap_err().to_string();
        assert!(err.starts_with("SLUICE_JWT_HS256_SECRET:"), "{err}");
        let cli = parse(&[
            "--jwt-hs256-secret",
            &"x".repeat(32),
            "--jwt-hs256-secret-file",
            "/tmp/x",
        ])
        .unwrap();
        assert!(cli.settings.jwt_hs256_secret().is_err());
    }
}
