//! The shipped files themselves: Envoy accepts each one as shipped (only the JWKS path pointed at
//! a real key file), and the strict variant stays the default plus its failure handling.

use crate::{
    proxy::{self, ShippedConfig},
    tokens::TokenIssuer,
};

#[test]
fn every_shipped_configuration_passes_envoy_validation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    TokenIssuer::generate().write_jwks(&jwks);
    for config in ShippedConfig::ALL {
        let text = proxy::render_as_shipped(config, &jwks);
        match proxy::validate(&text) {
            Ok(said) => {
                assert!(said.contains("OK"), "{config:?}: {said}");
                // A field renamed or deprecated in a newer Envoy shows up here first.
                assert!(
                    !said.to_ascii_lowercase().contains("deprecated"),
                    "{} uses a deprecated field:\n{said}",
                    config.path().display()
                );
            }
            Err(said) => panic!("envoy rejects {}:\n{said}", config.path().display()),
        }
    }
}

#[test]
fn every_shipped_configuration_sets_the_documented_rate_limit_choices() {
    for config in ShippedConfig::ALL {
        let text = without_comments(&config.text());
        for required in [
            "domain: edge",
            "timeout: 0.1s",
            "enable_x_ratelimit_headers: DRAFT_VERSION_03",
            "transport_api_version: V3",
            "payload_in_metadata: jwt_payload",
            "forward: false",
            "default_value: anonymous",
            "allow_missing: {}",
        ] {
            assert!(
                text.contains(required),
                "{} lacks {required:?}",
                config.path().display()
            );
        }
        let deny = if config == ShippedConfig::Strict {
            "failure_mode_deny: true"
        } else {
            "failure_mode_deny: false"
        };
        assert!(
            text.contains(deny),
            "{} lacks {deny:?}",
            config.path().display()
        );
    }
    assert!(
        without_comments(&ShippedConfig::Grpc.text())
            .contains("rate_limited_as_resource_exhausted: true")
    );
}

#[test]
fn the_strict_variant_differs_from_the_default_only_in_failure_handling() {
    let default = without_comments(&ShippedConfig::Http.text());
    let strict = without_comments(&ShippedConfig::Strict.text())
        .replace("failure_mode_deny: true", "failure_mode_deny: false")
        .lines()
        .filter(|line| !line.trim_start().starts_with("status_on_error:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        strict, default,
        "envoy-strict.yaml must be envoy.yaml with failure_mode_deny: true and status_on_error"
    );
}

/// The YAML without comment lines and blank lines (the shipped files put comments on lines of
/// their own).
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let trimmed = line.trim_start();
            !trimmed.is_empty() && !trimmed.starts_with('#')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_sluice_cluster_drops_into_the_shipped_configuration() {
    // Arrange: envoy/envoy.yaml with its `sluice` cluster (the last one) replaced by
    // deploy/kubernetes/envoy-sluice-cluster.yaml, indented as a `clusters:` entry
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    TokenIssuer::generate().write_jwks(&jwks);
    let shipped = proxy::render_as_shipped(ShippedConfig::Http, &jwks);
    let (before, _) = shipped
        .split_once("\n  - name: sluice\n")
        .expect("envoy/envoy.yaml ends with its `sluice` cluster");
    let snippet_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/envoy-sluice-cluster.yaml");
    let snippet = std::fs::read_to_string(&snippet_path).expect("the Kubernetes cluster snippet");
    let cluster: String = without_comments(&snippet)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("  {line}\n"))
        .collect();
    let text = format!("{before}\n{cluster}");

    // Act
    let said = proxy::validate(&text);

    // Assert
    let said = said.unwrap_or_else(|said| panic!("envoy rejects the Kubernetes cluster:\n{said}"));
    assert!(said.contains("OK"), "{said}");
    assert!(text.contains("sluice.sluice.svc.cluster.local"));
}
