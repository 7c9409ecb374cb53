//! `sluice.admin.v1.PolicyService`: turns each RPC into domain types, checks the caller's
//! [`TenantScope`] (put into the request by the JWT interceptor), and calls the policy store.

use std::sync::Arc;

use prost_types::{FieldMask, Timestamp};
use tonic::{Request, Response, Status};

use super::{error::AdminError, page_token::PageTokenCodec};
use crate::{
    domain::{
        EndpointPattern, FieldViolation, Limits, NewPolicy, Policy, PolicyId, PolicyPatch,
        PolicyTenant, TenantScope,
    },
    policy_refresh::PolicyChange,
    proto::sluice::admin::v1 as pb,
    store::PolicyStore,
};

/// Default `page_size` of `ListPolicies`.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest `page_size`; larger requests are served this many.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The fields an update may name in its mask (the proto names; camelCase is accepted too).
const MUTABLE_FIELDS: [&str; 6] = [
    "endpoint_pattern",
    "max_requests",
    "window_seconds",
    "burst_limit",
    "enabled",
    "shadow",
];

/// The policy admin service.
pub struct PolicyAdmin {
    store: Arc<dyn PolicyStore>,
    /// `window_seconds` of a created policy that gives none (RATE_LIMIT_DEFAULT_WINDOW).
    default_window_seconds: u32,
    page_tokens: PageTokenCodec,
    /// Called with every successful change, before the RPC answers, so this instance applies
    /// its own change before the caller can see the response (other instances hear of it
    /// through the store's own notifications).
    on_change: PolicyChangeHook,
}

/// What the admin service calls after it changed a policy, with the policy as stored now (or
/// the id it deleted).
pub type PolicyChangeHook = Arc<dyn Fn(PolicyChange) + Send + Sync>;

impl PolicyAdmin {
    pub fn new(
        store: Arc<dyn PolicyStore>,
        default_window_seconds: u32,
        page_tokens: PageTokenCodec,
        on_change: PolicyChangeHook,
    ) -> Self {
        Self {
            store,
            default_window_seconds,
            page_tokens,
            on_change,
        }
    }
}

fn scope_of<T>(request: &Request<T>) -> Result<TenantScope, AdminError> {
    request
        .extensions()
        .get::<TenantScope>()
        .cloned()
        .ok_or_else(|| AdminError::Unauthenticated("missing authorization metadata".into()))
}

fn parse_id(raw: &str, field: &str) -> Result<PolicyId, AdminError> {
    PolicyId::parse(raw).map_err(|e| AdminError::invalid(field, e))
}

fn non_empty(raw: &str) -> Option<&str> {
    (!raw.is_empty()).then_some(raw)
}

/// Accepts a field-mask path in snake_case or camelCase, returning the snake_case name.
fn mask_field(path: &str) -> Result<&'static str, FieldViolation> {
    let snake: String = path
        .chars()
        .flat_map(|c| {
            if c.is_ascii_uppercase() {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect();
    let snake = snake.strip_prefix("policy.").unwrap_or(&snake);
    if let Some(field) = MUTABLE_FIELDS.iter().find(|f| **f == snake) {
        return Ok(field);
    }
    let description = match snake {
        "tenant_id" => {
            "tenant_id cannot be changed; create a policy for the other tenant instead".to_owned()
        }
        "id" | "etag" | "created_at" | "updated_at" => {
            format!("{snake} is set by the server and cannot be changed")
        }
        _ => format!(
            "unknown field {path:?}; updatable fields are {}",
            MUTABLE_FIELDS.join(", ")
        ),
    };
    Err(FieldViolation::new("update_mask", description))
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn to_proto(policy: &Policy) -> pb::Policy {
    pb::Policy {
        id: policy.id.to_string(),
        tenant_id: policy.tenant.to_string(),
        endpoint_pattern: policy.pattern.to_string(),
        max_requests: policy.limits.max_requests(),
        window_seconds: policy.limits.window_seconds(),
        burst_limit: policy.limits.burst_limit(),
        enabled: Some(policy.enabled),
        shadow: policy.shadow,
        created_at: Some(timestamp(policy.created_at)),
        updated_at: Some(timestamp(policy.updated_at)),
        etag: policy.etag(),
    }
}

impl PolicyAdmin {
    fn new_policy(&self, scope: &TenantScope, policy: pb::Policy) -> Result<NewPolicy, AdminError> {
        let mut violations = Vec::new();
        let tenant = match non_empty(&policy.tenant_id) {
            Some(raw) => PolicyTenant::parse(raw)
                .map_err(|e| violations.push(FieldViolation::new("policy.tenant_id", e)))
                .ok(),
            None => match scope.home_tenant() {
                Some(home) => Some(PolicyTenant::Tenant(home.clone())),
                None => {
                    violations.push(FieldViolation::new(
                        "policy.tenant_id",
                        "must be given: the token has no tenant_id claim to default to",
                    ));
                    None
                }
            },
        };
        let pattern = EndpointPattern::parse(&policy.endpoint_pattern)
            .map_err(|e| violations.push(FieldViolation::new("policy.endpoint_pattern", e)))
            .ok();
        let window = match policy.window_seconds {
            0 => self.default_window_seconds,
            given => given,
        };
        let limits = Limits::new(policy.max_requests, window, policy.burst_limit)
            .map_err(|v| violations.extend(v))
            .ok();
        match (tenant, pattern, limits) {
            (Some(tenant), Some(pattern), Some(limits)) if violations.is_empty() => {
                if !scope.allows(&tenant) {
                    return Err(AdminError::PermissionDenied(format!(
                        "this token may only manage policies of tenant {}, not {tenant}",
                        scope.home_tenant().map(|t| t.as_str()).unwrap_or("?")
                    )));
                }
                Ok(NewPolicy {
                    tenant,
                    pattern,
                    limits,
                    enabled: policy.enabled.unwrap_or(true),
                    shadow: policy.shadow,
                })
            }
            _ => Err(AdminError::Invalid(violations)),
        }
    }

    /// The patch an update names: the masked fields, or with an empty mask every field the
    /// request populates (AIP-134), so `shadow: false` must be named in the mask to apply.
    fn patch(policy: &pb::Policy, mask: Option<&FieldMask>) -> Result<PolicyPatch, AdminError> {
        let mut violations = Vec::new();
        let paths: Vec<&'static str> = match mask.map(|m| m.paths.as_slice()) {
            Some(paths) if !paths.is_empty() => paths
                .iter()
                .filter_map(|p| mask_field(p).map_err(|v| violations.push(v)).ok())
                .collect(),
            _ => MUTABLE_FIELDS
                .into_iter()
                .filter(|field| match *field {
                    "endpoint_pattern" => !policy.endpoint_pattern.is_empty(),
                    "max_requests" => policy.max_requests != 0,
                    "window_seconds" => policy.window_seconds != 0,
                    "burst_limit" => policy.burst_limit != 0,
                    "enabled" => policy.enabled.is_some(),
                    "shadow" => policy.shadow,
                    _ => false,
                })
                .collect(),
        };
        if paths.is_empty() && violations.is_empty() {
            violations.push(FieldViolation::new(
                "update_mask",
                "names no field to change; list fields in update_mask or set them in policy",
            ));
        }
        let mut patch = PolicyPatch::default();
        for path in paths {
            match path {
                "endpoint_pattern" => match EndpointPattern::parse(&policy.endpoint_pattern) {
                    Ok(p) => patch.pattern = Some(p),
                    Err(e) => violations.push(FieldViolation::new("policy.endpoint_pattern", e)),
                },
                "max_requests" => patch.max_requests = Some(policy.max_requests),
                "window_seconds" => patch.window_seconds = Some(policy.window_seconds),
                "burst_limit" => patch.burst_limit = Some(policy.burst_limit),
                "enabled" => patch.enabled = Some(policy.enabled.unwrap_or(false)),
                "shadow" => patch.shadow = Some(policy.shadow),
                _ => {}
            }
        }
        if violations.is_empty() {
            Ok(patch)
        } else {
            Err(AdminError::Invalid(violations))
        }
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for PolicyAdmin {
    #[tracing::instrument(skip_all, fields(rpc = "CreatePolicy", tenant, policy))]
    async fn create_policy(
        &self,
        request: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let scope = scope_of(&request)?;
        let policy = request
            .into_inner()
            .policy
            .ok_or_else(|| AdminError::invalid("policy", "must be given"))?;
        let new = self.new_policy(&scope, policy)?;
        tracing::Span::current().record("tenant", new.tenant.as_str());
        let created = self.store.create(new).await.map_err(AdminError::from)?;
        tracing::Span::current().record("policy", created.id.to_string());
        tracing::info!(tenant = %created.tenant, pattern = %created.pattern, "policy created");
        (self.on_change)(PolicyChange::Upserted(created.clone()));
        Ok(Response::new(to_proto(&created)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetPolicy", policy))]
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let scope = scope_of(&request)?;
        let id = parse_id(&request.get_ref().id, "id")?;
        tracing::Span::current().record("policy", id.to_string());
        let policy = self.store.get(&scope, id).await.map_err(AdminError::from)?;
        Ok(Response::new(to_proto(&policy)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdatePolicy", policy))]
    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let scope = scope_of(&request)?;
        let request = request.into_inner();
        let policy = request
            .policy
            .ok_or_else(|| AdminError::invalid("policy", "must be given"))?;
        let id = parse_id(&policy.id, "policy.id")?;
        tracing::Span::current().record("policy", id.to_string());
        let mask = request.update_mask.as_ref();
        let patch = Self::patch(&policy, mask)?;
        // With an empty mask every populated field is part of the update, so a `tenant_id` that
        // differs from the policy's own is a request to move it, which is refused rather than
        // silently ignored. (With a mask, fields outside it are ignored, as AIP-134 says.)
        if mask.is_none_or(|m| m.paths.is_empty())
            && let Some(given) = non_empty(&policy.tenant_id)
        {
            let current = self.store.get(&scope, id).await.map_err(AdminError::from)?;
            if given != current.tenant.as_str() {
                return Err(AdminError::invalid(
                    "policy.tenant_id",
                    format!(
                        "tenant_id cannot be changed (this policy belongs to {}); create a policy for {given:?} instead",
                        current.tenant
                    ),
                )
                .into());
            }
        }
        let updated = self
            .store
            .update(&scope, id, non_empty(&policy.etag), &patch)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(tenant = %updated.tenant, pattern = %updated.pattern, "policy updated");
        (self.on_change)(PolicyChange::Upserted(updated.clone()));
        Ok(Response::new(to_proto(&updated)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeletePolicy", policy))]
    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<()>, Status> {
        let scope = scope_of(&request)?;
        let request = request.into_inner();
        let id = parse_id(&request.id, "id")?;
        tracing::Span::current().record("policy", id.to_string());
        self.store
            .delete(&scope, id, non_empty(&request.etag))
            .await
            .map_err(AdminError::from)?;
        tracing::info!("policy deleted");
        (self.on_change)(PolicyChange::Removed(id));
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListPolicies"))]
    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let scope = scope_of(&request)?;
        let request = request.into_inner();
        let filter = match non_empty(&request.tenant_id) {
            Some(raw) => {
                Some(PolicyTenant::parse(raw).map_err(|e| AdminError::invalid("tenant_id", e))?)
            }
            None => None,
        };
        if let Some(tenant) = &filter
            && !scope.allows(tenant)
        {
            return Err(AdminError::PermissionDenied(format!(
                "this token may only list policies of tenant {}, not {tenant}",
                scope.home_tenant().map(|t| t.as_str()).unwrap_or("?")
            ))
            .into());
        }
        let page_size = match request.page_size {
            size if size < 0 => {
                return Err(AdminError::invalid(
                    "page_size",
                    format!("must not be negative, got {size}"),
                )
                .into());
            }
            0 => DEFAULT_PAGE_SIZE,
            size => (size as u32).min(MAX_PAGE_SIZE),
        };
        let filter_key = filter.as_ref().map(|t| t.as_str()).unwrap_or("");
        let after = match non_empty(&request.page_token) {
            Some(token) => Some(
                self.page_tokens
                    .decode(token, filter_key)
                    .map_err(|e| AdminError::invalid("page_token", e))?,
            ),
            None => None,
        };
        let mut policies = self
            .store
            .list(&scope, filter.as_ref(), after, page_size + 1)
            .await
            .map_err(AdminError::from)?;
        let next_page_token = if policies.len() > page_size as usize {
            policies.truncate(page_size as usize);
            policies
                .last()
                .map(|last| self.page_tokens.encode(last.id, filter_key))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: policies.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_paths_accept_snake_and_camel_case() {
        assert_eq!(mask_field("max_requests").unwrap(), "max_requests");
        assert_eq!(mask_field("maxRequests").unwrap(), "max_requests");
        assert_eq!(
            mask_field("policy.endpointPattern").unwrap(),
            "endpoint_pattern"
        );
        assert!(
            mask_field("tenant_id")
                .unwrap_err()
                .description
                .contains("cannot be changed")
        );
        assert!(
            mask_field("tenantId")
                .unwrap_err()
                .description
                .contains("cannot be changed")
        );
        assert!(
            mask_field("etag")
                .unwrap_err()
                .description
                .contains("set by the server")
        );
        assert!(
            mask_field("colour")
                .unwrap_err()
                .description
                .contains("unknown field \"colour\"")
        );
    }

    #[test]
    fn empty_mask_takes_populated_fields() {
        let policy = pb::Policy {
            max_requests: 7,
            enabled: Some(false),
            ..Default::default()
        };
        let patch = PolicyAdmin::patch(&policy, None).unwrap();
        assert_eq!(patch.max_requests, Some(7));
        assert_eq!(patch.enabled, Some(false));
        assert_eq!(patch.window_seconds, None);
        assert_eq!(patch.shadow, None);
        assert!(PolicyAdmin::patch(&pb::Policy::default(), None).is_err());
    }
}
