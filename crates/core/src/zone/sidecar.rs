//! The SDK sidecar of a service type's pods, and the narrow identity it runs as.
//!
//! The sidecar is a native sidecar (the first init container, `restartPolicy: Always`) running
//! `gamezone sdk` from the operator's image on the pod's loopback. It alone gets an API token:
//! a projected ServiceAccount token, which the kubelet binds to the pod, so the API server's
//! ValidatingAdmissionPolicy (`deploy/sdk-policy.yaml`) can admit its writes to its own
//! GameServer only. The game container gets no token (`automountServiceAccountToken: false`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, ProjectedVolumeSource, ResourceRequirements, SecurityContext,
    ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use crate::api::{GameZone, ReadyMode, ServiceType};

/// Name of the sidecar container.
pub const SDK_CONTAINER: &str = "gamezone-sdk";
/// The sidecar's command, in the operator image beside `gamezone` and `gamezone-init`.
pub const SDK_BINARY: &str = "gamezone-sdk";
/// The sidecar's gRPC port on the pod's loopback (Agones' default).
pub const SDK_GRPC_PORT: u16 = 9357;
/// The sidecar's HTTP port on the pod's loopback (Agones' default).
pub const SDK_HTTP_PORT: u16 = 9358;
/// Prefix of the ServiceAccount, Role and RoleBinding the sidecar runs as, `<prefix><zone>`; the
/// admission policy recognises the sidecar by it.
pub const SIDECAR_IDENTITY_PREFIX: &str = "gamezone-sdk-";
/// Where the sidecar's token is mounted: the in-cluster default, so it needs no flag.
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Whether the pods of `service` need the sidecar: they use gates, health checks, SDK readiness
/// or gate webhooks.
pub fn needs_sdk(service: &ServiceType) -> bool {
    let l = &service.lifecycle;
    !l.readiness_gates.is_empty()
        || !l.deletable_gates.is_empty()
        || l.webhook_config.is_some()
        || l.health.is_some_and(|h| !h.disabled)
        || l.ready == ReadyMode::Sdk
}

/// The name of the zone's sidecar identity (ServiceAccount, Role, RoleBinding).
pub fn sidecar_identity_name(zone: &str) -> String {
    format!("{SIDECAR_IDENTITY_PREFIX}{zone}")
}

/// Env vars telling the game where the sidecar listens, under GameZone's, Agones' and Carrier's
/// names, so games written for either run unchanged.
pub fn game_env() -> Vec<EnvVar> {
    let mut out = Vec::new();
    for sdk in ["GAMEZONE", "AGONES", "CARRIER"] {
        out.push(plain(&format!("{sdk}_SDK_GRPC_PORT"), SDK_GRPC_PORT.to_string()));
        out.push(plain(&format!("{sdk}_SDK_HTTP_PORT"), SDK_HTTP_PORT.to_string()));
    }
    out
}

/// The ports the sidecar takes in the pod's network namespace; a game port on one is refused.
pub fn reserved_ports() -> [u16; 2] {
    [SDK_GRPC_PORT, SDK_HTTP_PORT]
}

fn plain(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), ..Default::default() }
}

/// An env var from the pod's own fields (downward API), e.g. `metadata.uid`.
pub(super) fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sidecar container and the token volume only it mounts; with `artifacts`, it also mounts
/// the artifacts volume read-only, to show the game the current tree's digest.
pub fn sidecar(image: &str, artifacts: bool) -> (Container, Volume) {
    let token = "gamezone-sdk-token";
    let mut env = vec![
        field("GAMEZONE_SERVER", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("GAMEZONE_POD_UID", "metadata.uid"),
        plain("GAMEZONE_SDK_GRPC_PORT", SDK_GRPC_PORT.to_string()),
        plain("GAMEZONE_SDK_HTTP_PORT", SDK_HTTP_PORT.to_string()),
    ];
    let mut mounts = vec![VolumeMount {
        name: token.into(),
        mount_path: TOKEN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if artifacts {
        env.push(plain(super::build::ARTIFACTS_DIR_ENV, super::build::INIT_ROOT.into()));
        mounts.push(VolumeMount {
            name: super::build::ARTIFACTS_VOLUME.into(),
            mount_path: super::build::INIT_ROOT.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let container = Container {
        name: SDK_CONTAINER.into(),
        image: Some(image.into()),
        // `gamezone sdk` in a binary of its own: every game pod maps it.
        command: Some(vec![SDK_BINARY.into()]),
        // A native sidecar: started before the game, running as long as the pod.
        restart_policy: Some("Always".into()),
        env: Some(env),
        // Measured (benches/sdk.rs, one thread, in a cluster): idle 0 CPU and 9.1 MiB RSS, under
        // 1 MiB of it anonymous, the rest the binary's pages (shared by every pod of the image
        // on a node); 0.4% of a core at 22 calls/s.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let volume = Volume {
        name: token.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3600),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(k8s_openapi::api::core::v1::ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(k8s_openapi::api::core::v1::DownwardAPIProjection {
                        items: Some(vec![k8s_openapi::api::core::v1::DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                api_version: None,
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    (container, volume)
}

/// The sidecar's ServiceAccount, and a Role letting it read and patch GameServers and read
/// WebhookConfigurations in the zone's namespace; which GameServer and which fields it may
/// change, the admission policy decides.
pub fn sidecar_identity(zone: &GameZone) -> (ServiceAccount, Role, RoleBinding) {
    let zone_name = zone.name_any();
    let name = sidecar_identity_name(&zone_name);
    let meta = super::build::child_meta(zone, name.clone());
    let sa = ServiceAccount { metadata: meta.clone(), ..Default::default() };
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![crate::api::GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![
            rule(&["gameservers"], &["get", "list", "watch", "patch"]),
            rule(&["gameservers/status"], &["get", "patch"]),
            rule(&["webhookconfigurations"], &["get", "list", "watch"]),
        ]),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: zone.namespace(),
            api_group: None,
        }]),
    };
    (sa, role, binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_artifacts_the_sidecar_sees_the_volume_read_only_and_is_told_where() {
        let (plain, _) = sidecar("op:1", false);
        assert!(plain.volume_mounts.iter().flatten().all(|m| m.name != super::super::build::ARTIFACTS_VOLUME));
        let (with, _) = sidecar("op:1", true);
        let mount = with.volume_mounts.iter().flatten().find(|m| m.name == super::super::build::ARTIFACTS_VOLUME);
        let mount = mount.expect("the artifacts volume is mounted");
        assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/gamezone/artifacts", Some(true)));
        let env = with.env.iter().flatten().find(|e| e.name == "GAMEZONE_ARTIFACTS_DIR").unwrap();
        assert_eq!(env.value.as_deref(), Some("/gamezone/artifacts"));
    }

    #[test]
    fn the_sidecar_s_role_reads_webhook_configurations_and_writes_only_game_servers() {
        let zone = gamezone_api::fixture::zone("zone1").namespace("ns").build();
        let (_, role, _) = sidecar_identity(&zone);
        let rules = role.rules.unwrap();
        let verbs = |resource: &str| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
                .flat_map(|r| r.verbs.clone())
                .collect()
        };
        assert_eq!(verbs("webhookconfigurations"), ["get", "list", "watch"]);
        assert!(verbs("gameservers").iter().all(|v| v != "create" && v != "delete"));
    }
}
