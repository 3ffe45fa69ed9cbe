//! The objects of a zone's live edits: the edits claim, the Samba Deployment serving it and
//! its Services, and what every server pod gains (the edits mount, `--edits` for the init
//! container and the `watch` sidecar). Pure: a zone without `spec.edits` gets none of them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::build::{BuildConfig, INIT_CONTAINER, SERVER_CONTAINER, child_meta};
use crate::api::*;
use crate::{Error, Result};

/// Name of the edits volume in server pods and in the Samba pod.
pub const EDITS_VOLUME: &str = "edits";
/// Folder of the claim that is shared (the edits); beside it, `.status/` holds each server's report.
pub const SHARE_DIR: &str = "share";
/// Folder of the claim where each server's sidecar copies its edits status, `<pod>.json`.
pub const REPORT_DIR: &str = ".status";
/// Where server pods see the edits (read-only).
pub const EDITS_MOUNT: &str = "/gamezone/edits";
/// Where server pods' sidecars write their report.
pub const REPORT_MOUNT: &str = "/gamezone/edits-status";
/// Name of the edits sidecar in server pods.
pub const EDITS_SIDECAR: &str = "artifacts-edits";
/// Where the Samba pod mounts the whole claim.
pub const SERVER_ROOT: &str = "/edits";
/// Where the Samba pod mounts the share's Secret.
pub const SECRET_MOUNT: &str = "/var/run/secrets/gamezone/edits";
/// SMB port of the share.
pub const SMB_PORT: i32 = 445;
/// Port of the edits API (status, reset, tar of the edits), reached through the API server's
/// service proxy on the ClusterIP Service `<zone>-edits-api`.
pub const API_PORT: i32 = 8080;
/// Share name testers map: `\\<host>\edits`.
pub const SHARE_NAME: &str = "edits";
/// Keys of the share's Secret.
pub const SECRET_KEYS: [&str; 2] = ["username", "password"];
/// Header carrying the share's password to the edits API: only who can read the Secret may
/// reset or read the edits.
pub const TOKEN_HEADER: &str = "x-gamezone-edits-token";
/// Volume shared by the game and the sidecar for pid files, when a signal is asked for.
const RUN_VOLUME: &str = "gamezone-run";
const RUN_DIR: &str = "/run/gamezone";
/// Label of the Samba pod (it carries no zone label, so no zone Service selects it).
pub const EDITS_POD_LABEL: &str = "gamezone.dev/edits";
/// Label value of the Samba pod's app.
const APP_LABEL: &str = "app.kubernetes.io/name";

/// Name of the edits claim, Deployment and SMB Service.
pub fn edits_name(zone: &str) -> String {
    format!("{zone}-edits")
}

/// Name of the ClusterIP Service of the edits API.
pub fn edits_api_name(zone: &str) -> String {
    format!("{zone}-edits-api")
}

/// Checks what the CRD cannot: edits need artifacts, and every `onSwap` names a service type.
pub fn validate_edits(zone: &GameZone) -> Result<()> {
    let Some(edits) = &zone.spec.edits else { return Ok(()) };
    if zone.spec.artifacts.is_empty() {
        return Err(Error::invalid(
            "spec.edits",
            "live edits are laid over the artifacts: add at least one layer to spec.artifacts (the edits are at its folder)",
        ));
    }
    for (i, notice) in edits.on_swap.iter().enumerate() {
        if !zone.spec.services.iter().any(|s| s.type_ == notice.type_) {
            return Err(Error::invalid(
                format!("spec.edits.onSwap[{i}].type"),
                format!("{:?} is not a type in spec.services", notice.type_),
            ));
        }
    }
    if let Some(e) = &edits.expose
        && e.type_ == ExposureType::ClusterIP
        && (e.load_balancer_class.is_some())
    {
        return Err(Error::invalid(
            "spec.edits.expose.loadBalancerClass",
            "only a LoadBalancer Service has a class; set expose.type: LoadBalancer or drop it",
        ));
    }
    Ok(())
}

fn pod_labels(zone: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(EDITS_POD_LABEL.to_string(), zone.to_string()), (APP_LABEL.to_string(), "gamezone-edits".into())])
}

/// The edits claim, when the zone has edits.
pub fn edits_claim(zone: &GameZone) -> Option<PersistentVolumeClaim> {
    let edits = zone.spec.edits.as_ref()?;
    let mut metadata = child_meta(zone, edits_name(&zone.name_any()));
    if edits.keep_claim {
        // Kept: neither the zone's garbage nor its cleanup.
        metadata.owner_references = None;
        if let Some(l) = metadata.labels.as_mut() {
            l.remove(MANAGED_BY_LABEL);
        }
    }
    Some(PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: edits.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(edits.size.clone().unwrap_or_else(|| "1Gi".into())),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The Samba Deployment serving the edits claim, when the zone has edits: smbd and the edits
/// API (`gamezone edits serve`), one replica.
pub fn edits_deployment(zone: &GameZone, cfg: &BuildConfig) -> Option<Deployment> {
    let edits = zone.spec.edits.as_ref()?;
    let zone_name = zone.name_any();
    let name = edits_name(&zone_name);
    let labels = pod_labels(&zone_name);
    let container = Container {
        name: "smbd".into(),
        image: Some(cfg.samba_image.clone()),
        command: Some(vec!["gamezone".into(), "edits".into(), "serve".into()]),
        args: Some(vec![
            "--root".into(),
            SERVER_ROOT.into(),
            "--secret-dir".into(),
            SECRET_MOUNT.into(),
            "--smb-port".into(),
            SMB_PORT.to_string(),
            "--api-port".into(),
            API_PORT.to_string(),
        ]),
        ports: Some(vec![
            ContainerPort { name: Some("smb".into()), container_port: SMB_PORT, ..Default::default() },
            ContainerPort { name: Some("api".into()), container_port: API_PORT, ..Default::default() },
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(SMB_PORT), host: None }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount { name: EDITS_VOLUME.into(), mount_path: SERVER_ROOT.into(), ..Default::default() },
            VolumeMount {
                name: "share-secret".into(),
                mount_path: SECRET_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "smb-state".into(), mount_path: "/var/lib/gamezone-smb".into(), ..Default::default() },
        ]),
        ..Default::default()
    };
    let volumes = vec![
        Volume {
            name: EDITS_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: name.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "share-secret".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(edits.secret_ref.name.clone()), ..Default::default() }),
            ..Default::default()
        },
        Volume { name: "smb-state".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    // Where the zone's servers run (the first service type's placement).
    let placed = zone.spec.services.first();
    Some(Deployment {
        metadata: child_meta(zone, name),
        status: None,
        spec: DeploymentSpec {
            replicas: Some(1),
            // One smbd at a time on the claim.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }),
            selector: LabelSelector { match_labels: Some(labels.clone()), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    node_selector: placed.filter(|s| !s.node_selector.is_empty()).map(|s| s.node_selector.clone()),
                    tolerations: placed.filter(|s| !s.tolerations.is_empty()).map(|s| s.tolerations.clone()),
                    image_pull_secrets: super::build::pull_secrets(zone),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
    })
}

/// The SMB Service (exposed as `spec.edits.expose` says) and the ClusterIP Service of the edits
/// API, when the zone has edits.
pub fn edits_services(zone: &GameZone) -> Vec<Service> {
    let Some(edits) = &zone.spec.edits else { return Vec::new() };
    let zone_name = zone.name_any();
    let exposure = edits.expose.clone().unwrap_or_default();
    let mut smb_meta = child_meta(zone, edits_name(&zone_name));
    let mut annotations = exposure.annotations.clone();
    if let Some(h) = share_hostname(zone) {
        annotations.insert("external-dns.alpha.kubernetes.io/hostname".into(), h);
    }
    smb_meta.annotations = (!annotations.is_empty()).then_some(annotations);
    let type_ = match exposure.type_ {
        ExposureType::ClusterIP => "ClusterIP",
        ExposureType::NodePort => "NodePort",
        ExposureType::LoadBalancer => "LoadBalancer",
    };
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    let smb = Service {
        metadata: smb_meta,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(pod_labels(&zone_name)),
            ports: Some(vec![port("smb", SMB_PORT)]),
            load_balancer_class: exposure.load_balancer_class.clone(),
            ..Default::default()
        }),
        status: None,
    };
    let api = Service {
        metadata: child_meta(zone, edits_api_name(&zone_name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(pod_labels(&zone_name)),
            ports: Some(vec![port("api", API_PORT)]),
            ..Default::default()
        }),
        status: None,
    };
    vec![smb, api]
}

/// The external-dns name of the share, from `spec.edits.expose.hostname`.
pub fn share_hostname(zone: &GameZone) -> Option<String> {
    let h = zone.spec.edits.as_ref()?.expose.as_ref()?.hostname.as_deref()?;
    Some(h.replace("{zone}", &zone.name_any()).replace("{zoneId}", &zone.spec.zone_id.to_string()))
}

/// Where testers map the share: `\\<host>\edits`, the host being the external-dns name, else
/// the Service's DNS name in the cluster.
pub fn share_path(zone: &GameZone) -> Option<String> {
    zone.spec.edits.as_ref()?;
    let host = share_hostname(zone).unwrap_or_else(|| {
        format!("{}.{}.svc", edits_name(&zone.name_any()), zone.namespace().unwrap_or_else(|| "default".into()))
    });
    Some(format!("\\\\{host}\\{SHARE_NAME}"))
}

/// Adds the edits to a server pod of `service`: the claim's share folder read-only, `--edits`
/// for the init container (a restarted pod gets the edits back before the game starts) and the
/// `watch` sidecar after it, which applies edits while the game runs, on the same pins. A zone
/// without edits, or a pod without artifacts, is left as it is.
pub(crate) fn add_to_server_pod(zone: &GameZone, service: &ServiceType, spec: &mut PodSpec) {
    let Some(edits) = &zone.spec.edits else { return };
    let Some(inits) = spec.init_containers.as_mut() else { return };
    let Some(at) = inits.iter().position(|c| c.name == INIT_CONTAINER) else { return };
    let share_mount = VolumeMount {
        name: EDITS_VOLUME.into(),
        mount_path: EDITS_MOUNT.into(),
        sub_path: Some(SHARE_DIR.into()),
        read_only: Some(true),
        ..Default::default()
    };
    let init = &mut inits[at];
    init.args.get_or_insert_with(Vec::new).extend(["--edits".to_string(), EDITS_MOUNT.to_string()]);
    init.volume_mounts.get_or_insert_with(Vec::new).push(share_mount);

    let mut sidecar = init.clone();
    sidecar.name = EDITS_SIDECAR.into();
    // A native sidecar: it runs beside the game for the pod's life.
    sidecar.restart_policy = Some("Always".into());
    let mut args = vec!["watch".to_string()];
    args.extend(init.args.iter().flatten().skip(1).cloned());
    args.extend(["--edits-report".to_string(), format!("{REPORT_MOUNT}/$(POD_NAME).json")]);
    let notice = edits.on_swap.iter().find(|n| n.type_ == service.type_);
    if let Some(n) = notice {
        if let Some(cmd) = &n.exec {
            args.extend(["--on-swap-exec".to_string(), cmd.clone()]);
        }
        if let (Some(sig), Some(file)) = (n.signal, &n.pid_file) {
            args.extend([
                "--on-swap-signal".to_string(),
                format!("{sig:?}"),
                "--on-swap-pid-file".into(),
                file.clone(),
            ]);
        }
    }
    sidecar.args = Some(args);
    sidecar.env.get_or_insert_with(Vec::new).push(super::sidecar::field("POD_NAME", "metadata.name"));
    let mounts = sidecar.volume_mounts.get_or_insert_with(Vec::new);
    mounts.push(VolumeMount {
        name: EDITS_VOLUME.into(),
        mount_path: REPORT_MOUNT.into(),
        sub_path: Some(REPORT_DIR.into()),
        ..Default::default()
    });
    let signalled = notice.is_some_and(|n| n.signal.is_some());
    let run_mount = VolumeMount { name: RUN_VOLUME.into(), mount_path: RUN_DIR.into(), ..Default::default() };
    if signalled {
        mounts.push(run_mount.clone());
    }
    inits.insert(at + 1, sidecar);

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: EDITS_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: edits_name(&zone.name_any()),
            read_only: None,
        }),
        ..Default::default()
    });
    if signalled {
        volumes.push(Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        // The sidecar signals the game's pid, which it sees only in a shared process namespace.
        spec.share_process_namespace = Some(true);
        if let Some(server) = spec.containers.iter_mut().find(|c| c.name == SERVER_CONTAINER) {
            server.volume_mounts.get_or_insert_with(Vec::new).push(run_mount);
        }
    }
}

#[cfg(test)]
mod tests;
