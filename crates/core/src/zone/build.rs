//! GameZone → GameServers, Services, topology ConfigMap, migration Job, artifacts claim.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::layer::{Layer, SecretRef};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ImageVolumeSource, LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::names::*;
use crate::api::artifacts::TreeImage;
use crate::api::*;
use crate::{Error, Result};

/// `minAvailable` of a zone's PodDisruptionBudget: more than any number of pods, so the
/// disruption controller allows no eviction of a pod it selects, without the controller lookup
/// (a scale subresource) that `maxUnavailable: 0` needs and a GameServer does not have.
pub const EVERY_POD: i32 = i32::MAX;

/// Volume name of the artifacts tree.
pub const ARTIFACTS_VOLUME: &str = "artifacts";
/// Volume name of the packed tree mounted as an `image` volume.
pub const TREE_IMAGE_VOLUME: &str = "artifacts-image";
/// Where the init-container sees the artifacts volume.
pub const INIT_ROOT: &str = "/gamezone/artifacts";
/// The tree the init-container swaps in, inside the artifacts volume (a symlink to the built tree).
pub const CURRENT_TREE: &str = "current";
/// Env var telling app containers where the whole artifacts volume is (`current`, the state file).
pub const ARTIFACTS_DIR_ENV: &str = "GAMEZONE_ARTIFACTS_DIR";
/// Where Secrets referenced by artifact layers are mounted, one folder per Secret.
pub const SECRETS_DIR: &str = "/var/run/secrets/gamezone";
/// Where the topology ConfigMap is mounted in every server.
pub const TOPOLOGY_DIR: &str = "/etc/gamezone";
/// Key of the topology document in its ConfigMap.
pub const TOPOLOGY_KEY: &str = "topology.json";
/// Name of the service container in a server pod.
pub const SERVER_CONTAINER: &str = "server";
/// Name of the init-container that layers artifacts.
pub const INIT_CONTAINER: &str = "artifacts";
/// Name of the migration Job's container.
pub const MIGRATE_CONTAINER: &str = "migrate";
/// Name of a warm pod's container.
pub const WARM_CONTAINER: &str = "warm";
/// Label of a warm pod: the hash of the tree image it pre-warms a node with.
pub const WARM_LABEL: &str = "gamezone.dev/warm-tree";
/// Name of the pack Job's container.
pub const PACK_CONTAINER: &str = "pack";
/// Where the pack Job builds each layer (an emptyDir).
const PACK_ROOT: &str = "/gamezone/pack";

/// Operator settings that shape what a zone builds.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Image holding the `gamezone-init` binary.
    pub init_image: String,
    /// Image of the edits share: Debian's smbd and `gamezone` (`gamezone edits serve`).
    pub samba_image: String,
    /// Arguments every `gamezone-init` fetching from origins gets: the operator's egress policy
    /// (none for the default, so pods do not change with it).
    pub init_args: Vec<String>,
    /// Where layer pins are packed once and copied from (`--artifact-registry`); without it,
    /// every pod fetches from the origins.
    pub registry: Option<ArtifactRegistry>,
}

/// The operator's artifact registry: one repository holding every packed layer pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRegistry {
    /// `host[:port]/path`.
    pub repository: String,
    /// Plain HTTP (a registry in the cluster without TLS).
    pub plain_http: bool,
    /// Servers and migrations mount the packed tree as an `image` volume (the cluster's
    /// runtime holds each layer once per node); otherwise they copy it from the registry.
    pub image_volumes: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret, in each zone's namespace, with the registry's
    /// credentials: the pack Job pushes with it, copying init containers pull with it, and pods
    /// that mount the tree image name it in `imagePullSecrets`. Anonymous without.
    pub secret: Option<String>,
}

/// The key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
/// Where `gamezone-init` reads the registry's credentials.
const REGISTRY_AUTH_DIR: &str = "/var/run/secrets/gamezone-registry";
/// Volume name of the registry's credentials.
const REGISTRY_AUTH_VOLUME: &str = "registry-auth";

impl ArtifactRegistry {
    /// `gamezone-init`'s flags naming it and its credentials.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--registry".to_owned(), self.repository.clone()];
        if self.plain_http {
            args.push("--registry-plain-http".into());
        }
        if self.secret.is_some() {
            args.extend(["--registry-auth".to_owned(), format!("{REGISTRY_AUTH_DIR}/{DOCKER_CONFIG_KEY}")]);
        }
        args
    }

    /// The credentials' volume and the mount `args` name, when the registry has credentials.
    fn auth_volume(&self, volumes: &mut Vec<Volume>, mounts: &mut Vec<VolumeMount>) {
        let Some(secret) = &self.secret else { return };
        volumes.push(Volume {
            name: REGISTRY_AUTH_VOLUME.into(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..Default::default() }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: REGISTRY_AUTH_VOLUME.into(),
            mount_path: REGISTRY_AUTH_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
}

/// The edits share's image when none is given.
pub const DEFAULT_SAMBA_IMAGE: &str = "ghcr.io/gamezone-dev/gamezone-samba:0.1.0";

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            init_image: "ghcr.io/gamezone-dev/gamezone:latest".into(),
            samba_image: DEFAULT_SAMBA_IMAGE.into(),
            init_args: Vec::new(),
            registry: None,
        }
    }
}

/// sha256 of an object's JSON, hex; the identity of templates and migration inputs.
pub fn hash_of<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).expect("API objects serialize to JSON");
    hex(&Sha256::digest(json)[..8])
}

/// Lower-case hex of `bytes`. Reconciles hash every server's template each time, so this
/// avoids a `format!` per byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The labels every object of a zone carries.
pub fn zone_labels(zone: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(ZONE_LABEL.to_string(), zone.to_string()), (MANAGED_BY_LABEL.to_string(), MANAGER.to_string())])
}

/// Label selector matching every object of a zone.
pub fn zone_selector(zone: &str) -> String {
    format!("{ZONE_LABEL}={zone},{MANAGED_BY_LABEL}={MANAGER}")
}

/// Metadata of a zone's child named `name`, with the zone's labels and owner reference.
pub(crate) fn child_meta(zone: &GameZone, name: String) -> ObjectMeta {
    meta(zone, name, zone_labels(&zone.name_any()))
}

fn meta(zone: &GameZone, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: zone.namespace(),
        labels: Some(labels),
        owner_references: owner(zone).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The controller owner reference to the zone (absent offline, where the zone has no uid).
pub fn owner(zone: &GameZone) -> Option<OwnerReference> {
    zone.controller_owner_ref(&())
}

/// One server of a zone.
#[derive(Clone, Debug, PartialEq)]
pub struct WantedServer<'a> {
    /// Index of its service type in `spec.services`.
    pub type_index: usize,
    /// Its service type.
    pub service_type: &'a ServiceType,
    /// Server id.
    pub id: i64,
    /// `<zone>-<type>-<id>`.
    pub name: String,
}

/// Every server the zone asks for, in spec order.
pub fn wanted_servers(zone: &GameZone) -> Vec<WantedServer<'_>> {
    let name = zone.name_any();
    zone.spec
        .services
        .iter()
        .enumerate()
        .flat_map(|(type_index, service_type)| {
            let name = name.clone();
            service_type.ids().map(move |id| WantedServer {
                type_index,
                service_type,
                id,
                name: server_name(&name, &service_type.type_, id),
            })
        })
        .collect()
}

/// Checks what the CRD's CEL rules cannot: name lengths, artifact paths, Secret-free images.
pub fn validate(zone: &GameZone) -> Result<()> {
    let name = zone.name_any();
    check_child_names(zone)?;
    for (i, service) in zone.spec.services.iter().enumerate() {
        let longest = server_name(&name, &service.type_, service.ids().end().to_owned());
        if longest.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(
                format!("spec.services[{i}]"),
                format!(
                    "server name {longest:?} is {} characters; names <zone>-<type>-<id> must fit in {MAX_LABEL_LEN}: shorten the zone name or the type",
                    longest.len()
                ),
            ));
        }
        if super::needs_sdk(service) {
            for (j, port) in service.ports.iter().enumerate() {
                let taken = [port.container_port, port.host_port.filter(|_| port.policy == PortPolicy::Passthrough)];
                if let Some(n) = taken.into_iter().flatten().find(|n| super::reserved_ports().contains(&(*n as u16))) {
                    return Err(Error::invalid(
                        format!("spec.services[{i}].ports[{j}]"),
                        format!(
                            "port {n} is the SDK sidecar's ({} gRPC, {} HTTP, on the pod's loopback); listen on another",
                            super::SDK_GRPC_PORT,
                            super::SDK_HTTP_PORT
                        ),
                    ));
                }
            }
        }
        if let Some(metrics) = &service.metrics {
            let field = format!("spec.services[{i}].metrics");
            if let Some(p) =
                service.ports.iter().find(|p| p.container_port == Some(metrics.port) || p.name == METRICS_PORT_NAME)
            {
                return Err(Error::invalid(
                    &field,
                    format!(
                        "port {} ({METRICS_PORT_NAME}) clashes with the game port {:?}: serve metrics on a port of their own",
                        metrics.port, p.name
                    ),
                ));
            }
            if !metrics.path.starts_with('/') {
                return Err(Error::invalid(field, format!("path {:?} must start with /, e.g. /metrics", metrics.path)));
            }
        }
        if service.image.is_none() && zone.spec.default_image.is_none() {
            return Err(Error::invalid(
                format!("spec.services[{i}].image"),
                "no image: set spec.defaultImage or this service's image",
            ));
        }
    }
    artifacts_mount(zone)?;
    super::edits::validate_edits(zone)?;
    Ok(())
}

/// Every child whose name is bounded by a DNS label or a label value fits: the zone's name is a
/// label value on each child, Services are DNS labels, and a Job's name is its pods' `job-name`
/// label. The API server would refuse each of them one by one, after others were made.
fn check_child_names(zone: &GameZone) -> Result<()> {
    let name = zone.name_any();
    let mut bounded = vec![("metadata.name", "the zone's name (a label value on every child)", name.clone())];
    bounded.push(("metadata.name", "the headless Service", headless_service_name(&name)));
    if zone.spec.migration.is_some() {
        // The longest: the hash part is cut to 10 characters.
        bounded.push(("spec.migration", "the migration Job", migration_job_name(&name, &"0".repeat(10))));
    }
    if zone.spec.edits.is_some() {
        bounded.push(("spec.edits", "the edits API Service", super::edits::edits_api_name(&name)));
    }
    let fields: Vec<String> = (0..zone.spec.services.len()).map(|i| format!("spec.services[{i}].expose")).collect();
    for (service, field) in zone.spec.services.iter().zip(&fields) {
        if service.expose.as_ref().is_some_and(|e| e.per_type.is_some()) {
            bounded.push((field.as_str(), "the per-type Service", type_service_name(&name, &service.type_)));
        }
    }
    match bounded.into_iter().find(|(_, _, n)| n.len() > MAX_LABEL_LEN) {
        Some((field, what, long)) => Err(Error::invalid(
            field,
            format!(
                "{what} would be named {long:?}, {} characters; it must fit in {MAX_LABEL_LEN}: shorten the zone's name",
                long.len()
            ),
        )),
        None => Ok(()),
    }
}

/// Where the artifacts tree is mounted in the servers and the plan the init-container applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactsMount {
    /// Deepest directory containing every layer's path: the servers see the tree here.
    pub root: String,
    /// The layers, with paths relative to `root`.
    pub layers: Vec<Layer>,
}

/// The artifacts mount of a zone, or `None` when it has no artifacts.
pub fn artifacts_mount(zone: &GameZone) -> Result<Option<ArtifactsMount>> {
    if zone.spec.artifacts.is_empty() {
        return Ok(None);
    }
    let mut split = Vec::new();
    for (i, layer) in zone.spec.artifacts.iter().enumerate() {
        let field = format!("spec.artifacts[{i}].path");
        if !layer.path.starts_with('/') {
            return Err(Error::invalid(
                field,
                format!("{:?} must be an absolute path inside the containers, e.g. /app/artifacts", layer.path),
            ));
        }
        let parts: Vec<&str> = layer.path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        if parts.contains(&"..") {
            return Err(Error::invalid(field, format!("{:?} must not contain ..", layer.path)));
        }
        if parts.is_empty() {
            return Err(Error::invalid(
                field,
                "the artifacts cannot be mounted at /; use a folder such as /app/artifacts",
            ));
        }
        if layer.source().is_none() {
            return Err(Error::invalid(
                format!("spec.artifacts[{i}]"),
                "set exactly one source: git, s3, p4Export or local",
            ));
        }
        split.push(parts);
    }
    // The common folder of all layer paths; a layer at exactly that folder is fine, so a
    // single layer is mounted at its own path.
    let mut common: Vec<&str> = split[0].clone();
    for parts in &split[1..] {
        let n = common.iter().zip(parts).take_while(|(a, b)| a == b).count();
        common.truncate(n);
    }
    if common.is_empty() {
        return Err(Error::invalid(
            "spec.artifacts",
            "the layers' paths share no folder; put them under one folder such as /app/artifacts",
        ));
    }
    let layers = zone
        .spec
        .artifacts
        .iter()
        .zip(&split)
        .map(|(layer, parts)| Layer { path: parts[common.len()..].join("/"), ..layer.clone() })
        .collect();
    Ok(Some(ArtifactsMount { root: format!("/{}", common.join("/")), layers }))
}

/// The Secrets a layer refers to, each with the field (below the layer) that names it.
pub fn layer_secret_refs(layer: &Layer) -> impl Iterator<Item = (&'static str, &SecretRef)> {
    [
        ("git.secretRef", layer.git.as_ref().and_then(|g| g.secret_ref.as_ref())),
        ("s3.secretRef", layer.s3.as_ref().and_then(|s| s.secret_ref.as_ref())),
        ("p4Export.secretRef", layer.p4_export.as_ref().and_then(|p| p.secret_ref.as_ref())),
        (
            "p4Export.s3.secretRef",
            layer.p4_export.as_ref().and_then(|p| p.s3.as_ref()).and_then(|s| s.secret_ref.as_ref()),
        ),
    ]
    .into_iter()
    .filter_map(|(field, r)| Some((field, r?)))
}

/// Names of every Secret the layers refer to.
pub fn secret_names(layers: &[Layer]) -> BTreeSet<String> {
    layers.iter().flat_map(layer_secret_refs).map(|(_, r)| r.name.clone()).collect()
}

/// Artifacts volumes, the init-container and the app container's mounts and env, for pods that
/// need the tree.
struct ArtifactsPod {
    volumes: Vec<Volume>,
    init: Container,
    mounts: Vec<VolumeMount>,
    env: Vec<EnvVar>,
    /// Pull secrets the pod needs beside the zone's (the registry's, for the tree image).
    pull_secrets: Vec<String>,
}

/// How the pods of a zone version get its tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TreeFrom<'a> {
    /// The packed tree mounted as an `image` volume, checked by `gamezone-init mount`.
    Image(&'a TreeImage),
    /// Built in the pod's own volume by `gamezone-init apply`: from the artifact registry when
    /// there is one, else from the origins.
    Copy,
}

/// The tree's path for this zone: the image when the operator mounts images, the zone's pins
/// are packed, and nothing needs the tree writable (live edits, a shared claim).
fn tree_from<'a>(zone: &GameZone, tree: Option<&'a TreeImage>, cfg: &BuildConfig) -> TreeFrom<'a> {
    match (tree, &cfg.registry) {
        (Some(t), Some(r)) if r.image_volumes && zone.spec.edits.is_none() && zone.spec.shared_artifacts.is_none() => {
            TreeFrom::Image(t)
        }
        _ => TreeFrom::Copy,
    }
}

/// Whether the servers of `zone` mount its packed `tree` as an image (rather than copying it).
pub fn mounts_tree_image(zone: &GameZone, tree: Option<&TreeImage>, cfg: &BuildConfig) -> bool {
    !zone.spec.artifacts.is_empty() && matches!(tree_from(zone, tree, cfg), TreeFrom::Image(_))
}

fn artifacts_pod(
    zone: &GameZone,
    pins: &[String],
    tree: Option<&TreeImage>,
    cfg: &BuildConfig,
) -> Result<Option<ArtifactsPod>> {
    let Some(mount) = artifacts_mount(zone)? else {
        return Ok(None);
    };
    let plan_env = vec![
        env("GAMEZONE_LAYERS", serde_json::to_string(&mount.layers)?),
        env("GAMEZONE_REVISIONS", serde_json::to_string(pins)?),
    ];
    let env = vec![env(ARTIFACTS_DIR_ENV, INIT_ROOT)];
    if let TreeFrom::Image(tree) = tree_from(zone, tree, cfg) {
        return Ok(Some(image_pod(mount.root, tree, plan_env, cfg, env)));
    }
    let name = zone.name_any();
    let artifacts_volume = match &zone.spec.shared_artifacts {
        Some(_) => Volume {
            name: ARTIFACTS_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: artifacts_claim_name(&name),
                read_only: None,
            }),
            ..Default::default()
        },
        None => Volume {
            name: ARTIFACTS_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    };
    let mut volumes = vec![artifacts_volume];
    let mut init_mounts =
        vec![VolumeMount { name: ARTIFACTS_VOLUME.into(), mount_path: INIT_ROOT.into(), ..Default::default() }];
    // Copied from the artifact registry, the layers need none of their origins' Secrets; the
    // registry's credentials, if any.
    match &cfg.registry {
        None => secret_volumes(&mount.layers, &mut volumes, &mut init_mounts),
        Some(r) => r.auth_volume(&mut volumes, &mut init_mounts),
    }
    let registry_args = cfg.registry.iter().flat_map(ArtifactRegistry::args);
    let init = Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.init_image.clone()),
        command: Some(vec!["gamezone-init".into()]),
        args: Some(
            ["apply", "--root", INIT_ROOT, "--secrets-dir", SECRETS_DIR]
                .into_iter()
                .map(String::from)
                .chain(cfg.init_args.iter().cloned())
                .chain(registry_args)
                .collect(),
        ),
        env: Some(plan_env),
        volume_mounts: Some(init_mounts),
        ..Default::default()
    };
    // The tree at the layers' folder, as it was when the container started (a subPath mount
    // resolves `current` once). The whole volume, read-only, beside it: its `current` follows
    // every swap and it holds the state file with the pins and tree digest.
    let mounts = vec![
        VolumeMount {
            name: ARTIFACTS_VOLUME.into(),
            mount_path: mount.root,
            sub_path: Some(CURRENT_TREE.into()),
            ..Default::default()
        },
        VolumeMount {
            name: ARTIFACTS_VOLUME.into(),
            mount_path: INIT_ROOT.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    Ok(Some(ArtifactsPod { volumes, init, mounts, env, pull_secrets: Vec::new() }))
}

/// The packed tree as an `image` volume at `root` (read-only; the node's runtime pulls each
/// layer once for every pod), checked by the init container before the game starts. The
/// artifacts volume keeps its shape for the game and the SDK (`current`, the state file): a
/// small `emptyDir` whose `current` leads to the mount.
fn image_pod(
    root: String,
    tree: &TreeImage,
    plan_env: Vec<EnvVar>,
    cfg: &BuildConfig,
    env: Vec<EnvVar>,
) -> ArtifactsPod {
    let volumes = vec![
        Volume {
            name: ARTIFACTS_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: TREE_IMAGE_VOLUME.into(),
            image: Some(ImageVolumeSource {
                reference: Some(tree.image.clone()),
                pull_policy: Some("IfNotPresent".into()),
            }),
            ..Default::default()
        },
    ];
    let tree_mount = VolumeMount {
        name: TREE_IMAGE_VOLUME.into(),
        mount_path: root.clone(),
        read_only: Some(true),
        ..Default::default()
    };
    let init = Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.init_image.clone()),
        command: Some(vec!["gamezone-init".into()]),
        args: Some(
            ["mount", "--root", INIT_ROOT, "--image", &root, "--tree-digest", &tree.tree_digest]
                .into_iter()
                .chain(tree.tree_shape.as_deref().into_iter().flat_map(|s| ["--tree-shape", s]))
                .map(String::from)
                .collect(),
        ),
        env: Some(plan_env),
        volume_mounts: Some(vec![
            VolumeMount { name: ARTIFACTS_VOLUME.into(), mount_path: INIT_ROOT.into(), ..Default::default() },
            tree_mount.clone(),
        ]),
        // A wrong mount's message reaches the server controller, which has the tree copied.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let mounts = vec![
        tree_mount,
        VolumeMount {
            name: ARTIFACTS_VOLUME.into(),
            mount_path: INIT_ROOT.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    let pull_secrets = cfg.registry.iter().filter_map(|r| r.secret.clone()).collect();
    ArtifactsPod { volumes, init, mounts, env, pull_secrets }
}

/// A Secret volume per Secret the layers name, mounted where `gamezone-init` reads them.
fn secret_volumes(layers: &[Layer], volumes: &mut Vec<Volume>, mounts: &mut Vec<VolumeMount>) {
    for (i, secret) in secret_names(layers).into_iter().enumerate() {
        let volume = format!("artifacts-secret-{i}");
        mounts.push(VolumeMount {
            name: volume.clone(),
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: volume,
            secret: Some(SecretVolumeSource { secret_name: Some(secret), ..Default::default() }),
            ..Default::default()
        });
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Environment describing the zone's databases, shared by servers and the migrater.
fn database_env(zone: &GameZone) -> Vec<EnvVar> {
    let mut out = Vec::new();
    if let Some(redis) = &zone.spec.redis {
        out.push(env("REDIS_HOST", redis.host.clone()));
        out.push(env("REDIS_PORT", redis.port.to_string()));
        if let Some(secret) = &redis.password_secret_ref {
            out.push(secret_env("REDIS_PASSWORD", secret));
        }
    }
    if let Some(mysql) = &zone.spec.mysql {
        out.push(env("MYSQL_HOST", mysql.host.clone()));
        out.push(env("MYSQL_PORT", mysql.port.to_string()));
        out.push(env("MYSQL_USER", mysql.user.clone()));
        out.push(secret_env("MYSQL_PASSWORD", &mysql.password_secret_ref));
        out.push(env("MYSQL_DATABASE", mysql.database.clone()));
    }
    out
}

pub(crate) fn pull_secrets(zone: &GameZone) -> Option<Vec<LocalObjectReference>> {
    with_pull_secrets(zone, &[])
}

/// The zone's pull secrets and `more` (those not named already).
fn with_pull_secrets(zone: &GameZone, more: &[String]) -> Option<Vec<LocalObjectReference>> {
    let mut names: Vec<&String> = zone.spec.image_pull_secrets.iter().collect();
    names.extend(more.iter().filter(|m| !zone.spec.image_pull_secrets.contains(m)));
    (!names.is_empty()).then(|| names.into_iter().map(|n| LocalObjectReference { name: n.clone() }).collect())
}

/// The pod template of one server. Ports are added by the server controller once allocated.
pub fn server_template(
    zone: &GameZone,
    server: &WantedServer<'_>,
    pins: &[String],
    tree: Option<&TreeImage>,
    cfg: &BuildConfig,
) -> Result<PodTemplateSpec> {
    let zone_name = zone.name_any();
    let service = server.service_type;
    let image = game_image(zone, server)?;
    let mut labels = zone_labels(&zone_name);
    labels.insert(TYPE_LABEL.into(), service.type_.clone());
    labels.insert(ID_LABEL.into(), server.id.to_string());
    labels.insert(SERVER_LABEL.into(), server.name.clone());

    let mut env_vars = vec![
        env("GAMEZONE_ZONE", zone_name.clone()),
        env("GAMEZONE_ZONE_ID", zone.spec.zone_id.to_string()),
        env("GAMEZONE_TYPE", service.type_.clone()),
        env("GAMEZONE_ID", server.id.to_string()),
        env("GAMEZONE_INSTANCE", server.name.clone()),
        env("GAMEZONE_TOPOLOGY", format!("{TOPOLOGY_DIR}/{TOPOLOGY_KEY}")),
        EnvVar {
            name: "GAMEZONE_POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    env_vars.extend(database_env(zone));
    env_vars.extend(service.env.iter().cloned());

    let mut args = vec![service.type_.clone(), server.id.to_string()];
    args.extend(service.args.iter().cloned());

    let mut volumes = vec![Volume {
        name: "topology".into(),
        config_map: Some(ConfigMapVolumeSource { name: topology_name(&zone_name), ..Default::default() }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "topology".into(),
        mount_path: TOPOLOGY_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    let mut init_containers = None;
    let mut more_pull_secrets = Vec::new();
    if let Some(artifacts) = artifacts_pod(zone, pins, tree, cfg)? {
        volumes.extend(artifacts.volumes);
        mounts.extend(artifacts.mounts);
        env_vars.extend(artifacts.env);
        init_containers = Some(vec![artifacts.init]);
        more_pull_secrets = artifacts.pull_secrets;
    }
    // The SDK sidecar comes first, so the game can call it from its first moment; only it gets
    // an API token. Pods of types without it are as before (their template hash unchanged).
    let (mut service_account, mut automount) = (None, None);
    if super::needs_sdk(service) {
        let (sidecar, token) = super::sidecar(&cfg.init_image, volumes.iter().any(|v| v.name == ARTIFACTS_VOLUME));
        init_containers.get_or_insert_with(Vec::new).insert(0, sidecar);
        volumes.push(token);
        env_vars.extend(super::game_env());
        service_account = Some(super::sidecar_identity_name(&zone_name));
        automount = Some(false);
    }

    let mut spec = PodSpec {
        hostname: Some(server.name.clone()),
        subdomain: Some(headless_service_name(&zone_name)),
        init_containers,
        containers: vec![Container {
            name: SERVER_CONTAINER.into(),
            image: Some(image),
            args: Some(args),
            env: Some(env_vars),
            resources: service.resources.clone(),
            volume_mounts: Some(mounts),
            ..Default::default()
        }],
        volumes: Some(volumes),
        node_selector: (!service.node_selector.is_empty()).then(|| service.node_selector.clone()),
        tolerations: (!service.tolerations.is_empty()).then(|| service.tolerations.clone()),
        image_pull_secrets: with_pull_secrets(zone, &more_pull_secrets),
        service_account_name: service_account,
        automount_service_account_token: automount,
        ..Default::default()
    };
    super::edits::add_to_server_pod(zone, service, &mut spec);
    if let Some(sc) = &service.security_context {
        spec.containers[0].security_context = Some(sc.clone());
        restrict_beside(spec.init_containers.iter_mut().flatten(), sc);
    }
    let annotations = service.metrics.as_ref().map(|m| publish_metrics(&mut spec.containers[0], m));
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels), annotations, ..Default::default() }),
        spec: Some(spec),
    })
}

/// The env var that tells the game the port its zone declares for its metrics.
pub const METRICS_PORT_ENV: &str = "GAMEZONE_METRICS_PORT";

/// Publishes the game's metrics endpoint `m` on `game` as the named port a PodMonitor selects
/// (and tells the game its number), and returns the annotations a bare Prometheus's
/// `kubernetes_sd` relabeling reads.
fn publish_metrics(game: &mut Container, m: &GameMetrics) -> BTreeMap<String, String> {
    game.env.get_or_insert_with(Vec::new).push(env(METRICS_PORT_ENV, m.port.to_string()));
    game.ports.get_or_insert_with(Vec::new).push(ContainerPort {
        name: Some(METRICS_PORT_NAME.into()),
        container_port: m.port,
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), m.port.to_string()),
        ("prometheus.io/path".to_string(), m.path.clone()),
    ])
}

/// Restricts the operator's `containers` in a pod whose own container runs with `beside` (see
/// [`restrict`]), as that container's user when it names one that is not root: the files the
/// artifacts init container layers are then its own, and the edits sidecar may signal its
/// process, which takes the same uid.
fn restrict_beside<'a>(containers: impl Iterator<Item = &'a mut Container>, beside: &SecurityContext) {
    for c in containers {
        let own = c.security_context.get_or_insert_with(Default::default);
        if own.run_as_user.is_none() && beside.run_as_user.is_some_and(|uid| uid > 0) {
            own.run_as_user = beside.run_as_user;
            own.run_as_group = beside.run_as_group;
        }
        restrict(own);
    }
}

/// Makes `sc` what PodSecurity `restricted` asks of a container: not root (uid 65532 unless it
/// names one), no privilege escalation, every capability dropped, the runtime's default seccomp
/// profile. The operator's own containers get it when the service container has a security
/// context of its own; without one, pods stay as they were (their template hash unchanged).
pub fn restrict(sc: &mut SecurityContext) {
    sc.run_as_non_root = Some(true);
    sc.run_as_user.get_or_insert(65532);
    sc.allow_privilege_escalation = Some(false);
    sc.capabilities = Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None });
    sc.seccomp_profile = Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None });
}

/// Servers whose node mounted the tree image wrong (`copies` says which, by name) get a
/// template that copies the tree from the registry instead.
pub fn copy_tree_for(
    zone: &GameZone,
    pins: &[String],
    cfg: &BuildConfig,
    servers: &mut [GameServer],
    copies: impl Fn(&str) -> bool,
) -> Result<()> {
    let wanted = wanted_servers(zone);
    for gs in servers.iter_mut().filter(|g| copies(&g.name_any())) {
        if let Some(w) = wanted.iter().find(|w| w.name == gs.name_any()) {
            gs.spec.template = server_template(zone, w, pins, None, cfg)?;
        }
    }
    Ok(())
}

/// The game image of `server`: its service's, else the zone's default.
fn game_image(zone: &GameZone, server: &WantedServer<'_>) -> Result<String> {
    server.service_type.image.clone().or_else(|| zone.spec.default_image.clone()).ok_or_else(|| {
        Error::invalid(
            format!("spec.services[{}].image", server.type_index),
            "no image: set spec.defaultImage or this service's image",
        )
    })
}

/// The version an image reference names, as a label value: its tag, else the first 12 hex
/// digits of its digest, else `latest` (what a runtime pulls for a bare name).
pub fn image_version(image: &str) -> String {
    let (name, digest) = image.split_once('@').map_or((image, None), |(n, d)| (n, Some(d)));
    // A tag follows the last ':' after the last '/' (a registry's port comes before a '/').
    let tag = name.rsplit('/').next().and_then(|last| last.rsplit_once(':')).map(|(_, t)| t);
    let version = match (tag, digest) {
        (Some(t), _) if !t.is_empty() => t.to_string(),
        (_, Some(d)) => d.split_once(':').map_or(d, |(_, hex)| hex).chars().take(12).collect(),
        _ => "latest".to_string(),
    };
    // A label value: at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric.
    let cut: String = version.chars().take(63).collect();
    let trimmed = cut.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() { "unknown".to_string() } else { trimmed.to_string() }
}

/// One GameServer per id of each service type.
///
/// `tree`: the pins' packed tree image, once packed (see [`crate::api::GameZoneStatus::tree_image`]).
pub fn game_servers(
    zone: &GameZone,
    pins: &[String],
    tree: Option<&TreeImage>,
    cfg: &BuildConfig,
) -> Result<Vec<GameServer>> {
    let zone_name = zone.name_any();
    wanted_servers(zone)
        .into_iter()
        .map(|server| {
            let template = server_template(zone, &server, pins, tree, cfg)?;
            let mut labels = zone_labels(&zone_name);
            labels.insert(TYPE_LABEL.into(), server.service_type.type_.clone());
            labels.insert(ID_LABEL.into(), server.id.to_string());
            labels.insert(VERSION_LABEL.into(), image_version(&game_image(zone, &server)?));
            if !pins.is_empty() {
                labels.insert(ARTIFACTS_LABEL.into(), super::decide::artifact_revision(pins));
            }
            let mut gs = GameServer::new(
                &server.name,
                GameServerSpec {
                    zone: zone_name.clone(),
                    type_: server.service_type.type_.clone(),
                    id: server.id,
                    ports: server.service_type.ports.clone(),
                    template,
                    lifecycle: server.service_type.lifecycle.clone(),
                    constraints: Vec::new(),
                },
            );
            gs.metadata = meta(zone, server.name.clone(), labels);
            Ok(gs)
        })
        .collect()
}

fn service_ports(ports: &[GamePort]) -> Vec<ServicePort> {
    ports
        .iter()
        .flat_map(|p| {
            let port = p.container_port.or(p.host_port).unwrap_or_default();
            let protocols: &[&str] = match p.protocol {
                PortProtocol::Tcp => &["TCP"],
                PortProtocol::Udp => &["UDP"],
                PortProtocol::TcpUdp => &["TCP", "UDP"],
            };
            protocols.iter().map(move |proto| ServicePort {
                name: Some(if protocols.len() > 1 {
                    format!("{}-{}", p.name, proto.to_lowercase())
                } else {
                    p.name.clone()
                }),
                port,
                protocol: Some((*proto).into()),
                target_port: Some(IntOrString::Int(port)),
                ..Default::default()
            })
        })
        .filter(|p| p.port > 0)
        .collect()
}

fn expand_hostname(template: &str, zone: &GameZone, type_: &str, id: Option<i64>, server: &str) -> String {
    template
        .replace("{instance}", server)
        .replace("{type}", type_)
        .replace("{id}", &id.map(|i| i.to_string()).unwrap_or_default())
        .replace("{zone}", &zone.name_any())
        .replace("{zoneId}", &zone.spec.zone_id.to_string())
}

fn exposing_service(
    zone: &GameZone,
    name: String,
    selector: BTreeMap<String, String>,
    ports: &[GamePort],
    exposure: &Exposure,
    hostname: Option<String>,
) -> Service {
    let mut labels = selector.clone();
    labels.extend(zone_labels(&zone.name_any()));
    let mut annotations = exposure.annotations.clone();
    if let Some(h) = hostname {
        annotations.insert("external-dns.alpha.kubernetes.io/hostname".into(), h);
    }
    let mut metadata = meta(zone, name, labels);
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let type_ = match exposure.type_ {
        ExposureType::ClusterIP => "ClusterIP",
        ExposureType::NodePort => "NodePort",
        ExposureType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector),
            ports: Some(service_ports(ports)),
            load_balancer_class: exposure.load_balancer_class.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// The headless Service giving servers DNS names, plus the exposing Services the spec asks
/// for, plus the edits share's.
pub fn services(zone: &GameZone) -> Vec<Service> {
    let zone_name = zone.name_any();
    let mut out = vec![Service {
        metadata: meta(zone, headless_service_name(&zone_name), zone_labels(&zone_name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(zone_labels(&zone_name)),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        status: None,
    }];
    for service in &zone.spec.services {
        let Some(expose) = &service.expose else {
            continue;
        };
        if let Some(exposure) = &expose.per_type {
            let selector = BTreeMap::from([
                (ZONE_LABEL.to_string(), zone_name.clone()),
                (TYPE_LABEL.to_string(), service.type_.clone()),
            ]);
            let name = type_service_name(&zone_name, &service.type_);
            let hostname = exposure.hostname.as_deref().map(|h| expand_hostname(h, zone, &service.type_, None, &name));
            out.push(exposing_service(zone, name, selector, &service.ports, exposure, hostname));
        }
        if let Some(exposure) = &expose.per_instance {
            for id in service.ids() {
                let name = server_name(&zone_name, &service.type_, id);
                let selector = BTreeMap::from([(SERVER_LABEL.to_string(), name.clone())]);
                let hostname =
                    exposure.hostname.as_deref().map(|h| expand_hostname(h, zone, &service.type_, Some(id), &name));
                out.push(exposing_service(zone, name, selector, &service.ports, exposure, hostname));
            }
        }
    }
    // The edits share's Services: wanted only while the zone has edits, so turning edits off
    // deletes them with the other Services no longer wanted.
    out.extend(super::edits::edits_services(zone));
    out
}

/// One server as listed in the topology document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyEntry {
    /// Server name.
    pub name: String,
    /// Service type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Server id.
    pub id: i64,
    /// Stable DNS name of the server inside the cluster.
    pub dns: String,
    /// Ports, once allocated (name, port to connect to, container port, host port, protocol).
    pub ports: Vec<PortStatus>,
}

/// The zone's PodDisruptionBudget: the Eviction API refuses to evict any of its servers' pods
/// marked not evictable ([`EVICTABLE_LABEL`] `false`, kept current by the server controller by
/// the rules the operator itself deletes by); the others it does not select.
pub fn disruption_budget(zone: &GameZone) -> PodDisruptionBudget {
    let zone_name = zone.name_any();
    let mut selected = zone_labels(&zone_name);
    selected.insert(EVICTABLE_LABEL.into(), "false".into());
    PodDisruptionBudget {
        metadata: child_meta(zone, disruption_budget_name(&zone_name)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(EVERY_POD)),
            selector: Some(LabelSelector { match_labels: Some(selected), ..Default::default() }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The topology ConfigMap: every server's name, type, id, DNS name and ports, so processes
/// find each other without configured IPs. `ports` gives each server's allocated ports.
pub fn topology(zone: &GameZone, ports: &BTreeMap<String, Vec<PortStatus>>) -> ConfigMap {
    let zone_name = zone.name_any();
    let namespace = zone.namespace().unwrap_or_else(|| "default".into());
    let entries: Vec<TopologyEntry> = wanted_servers(zone)
        .into_iter()
        .map(|i| TopologyEntry {
            dns: server_dns_name(&zone_name, &namespace, &i.name),
            ports: ports.get(&i.name).cloned().unwrap_or_default(),
            type_: i.service_type.type_.clone(),
            id: i.id,
            name: i.name,
        })
        .collect();
    let doc = serde_json::json!({"zone": zone_name, "zoneId": zone.spec.zone_id, "instances": entries});
    ConfigMap {
        metadata: meta(zone, topology_name(&zone_name), zone_labels(&zone_name)),
        data: Some(BTreeMap::from([(
            TOPOLOGY_KEY.to_string(),
            serde_json::to_string_pretty(&doc).expect("topology serializes"),
        )])),
        ..Default::default()
    }
}

/// The ports a topology ConfigMap lists, by server name; empty if it is not a topology.
pub fn topology_ports(cm: &ConfigMap) -> BTreeMap<String, Vec<PortStatus>> {
    #[derive(serde::Deserialize)]
    struct Doc {
        instances: Vec<TopologyEntry>,
    }
    cm.data
        .as_ref()
        .and_then(|d| d.get(TOPOLOGY_KEY))
        .and_then(|text| serde_json::from_str::<Doc>(text).ok())
        .map(|doc| doc.instances.into_iter().map(|e| (e.name, e.ports)).collect())
        .unwrap_or_default()
}

/// Hash of what the migration depends on: its image and settings, the databases, the pinned
/// artifacts. `None` when the zone has no migration.
pub fn migration_inputs_hash(zone: &GameZone, pins: &[String]) -> Option<String> {
    let migration = zone.spec.migration.as_ref()?;
    Some(hash_of(&serde_json::json!({
        "migration": migration,
        "mysql": zone.spec.mysql,
        "redis": zone.spec.redis,
        "artifacts": zone.spec.artifacts,
        "pins": pins,
    })))
}

/// The migration Job for the current inputs, or `None` when the zone has no migration.
pub fn migration_job(
    zone: &GameZone,
    pins: &[String],
    tree: Option<&TreeImage>,
    cfg: &BuildConfig,
) -> Result<Option<Job>> {
    let (Some(migration), Some(hash)) = (&zone.spec.migration, migration_inputs_hash(zone, pins)) else {
        return Ok(None);
    };
    let zone_name = zone.name_any();
    let mut env_vars =
        vec![env("GAMEZONE_ZONE", zone_name.clone()), env("GAMEZONE_ZONE_ID", zone.spec.zone_id.to_string())];
    env_vars.extend(database_env(zone));
    env_vars.extend(migration.env.iter().cloned());
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut init_containers = None;
    let mut more_pull_secrets = Vec::new();
    if let Some(artifacts) = artifacts_pod(zone, pins, tree, cfg)? {
        volumes.extend(artifacts.volumes);
        mounts.extend(artifacts.mounts);
        env_vars.extend(artifacts.env);
        init_containers = Some(vec![artifacts.init]);
        more_pull_secrets = artifacts.pull_secrets;
    }
    if let Some(sc) = &migration.security_context {
        restrict_beside(init_containers.iter_mut().flatten(), sc);
    }
    let mut labels = zone_labels(&zone_name);
    labels.insert(super::decide::VersionJob::Migration.label(), hash.clone());
    Ok(Some(Job {
        metadata: meta(zone, migration_job_name(&zone_name, &hash), labels.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(migration.backoff_limit.unwrap_or(2)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    init_containers,
                    containers: vec![Container {
                        name: MIGRATE_CONTAINER.into(),
                        image: Some(migration.image.clone()),
                        args: (!migration.args.is_empty()).then(|| migration.args.clone()),
                        env: Some(env_vars),
                        volume_mounts: (!mounts.is_empty()).then_some(mounts),
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        security_context: migration.security_context.clone(),
                        ..Default::default()
                    }],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    image_pull_secrets: with_pull_secrets(zone, &more_pull_secrets),
                    node_selector: (!migration.node_selector.is_empty()).then(|| migration.node_selector.clone()),
                    tolerations: (!migration.tolerations.is_empty()).then(|| migration.tolerations.clone()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }))
}

/// Identity of a pack: the layers (as the pods see them), their pins and the registry.
/// `None` without an artifact registry or artifacts.
pub fn pack_inputs_hash(zone: &GameZone, pins: &[String], cfg: &BuildConfig) -> Result<Option<String>> {
    let (Some(registry), Some(mount)) = (&cfg.registry, artifacts_mount(zone)?) else {
        return Ok(None);
    };
    Ok(Some(hash_of(&serde_json::json!({"layers": mount.layers, "pins": pins, "registry": registry.repository}))))
}

/// The pack Job of the current pins: `gamezone-init pack` fetches each layer pin the registry
/// does not hold from its origin, once, and pushes it; servers and the migration then copy
/// from the registry. It runs on the nodes of the zone's first service type (its node selector
/// and tolerations). `None` without an artifact registry or artifacts.
pub fn pack_job(zone: &GameZone, pins: &[String], cfg: &BuildConfig) -> Result<Option<Job>> {
    let (Some(registry), Some(mount), Some(hash)) =
        (&cfg.registry, artifacts_mount(zone)?, pack_inputs_hash(zone, pins, cfg)?)
    else {
        return Ok(None);
    };
    let zone_name = zone.name_any();
    let mut volumes = vec![Volume {
        name: ARTIFACTS_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts =
        vec![VolumeMount { name: ARTIFACTS_VOLUME.into(), mount_path: PACK_ROOT.into(), ..Default::default() }];
    secret_volumes(&mount.layers, &mut volumes, &mut mounts);
    registry.auth_volume(&mut volumes, &mut mounts);
    let args = ["pack", "--root", PACK_ROOT, "--secrets-dir", SECRETS_DIR, "--report", "/dev/termination-log"]
        .into_iter()
        .map(String::from)
        .chain(cfg.init_args.iter().cloned())
        .chain(registry.args())
        .collect();
    let mut labels = zone_labels(&zone_name);
    labels.insert(super::decide::VersionJob::Pack.label(), hash.clone());
    let placement = zone.spec.services.first();
    Ok(Some(Job {
        metadata: meta(zone, pack_job_name(&zone_name, &hash), labels.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // The operator's own code, fetching what a zone's author named: as restricted
                    // as PodSecurity `restricted` asks, whatever the zone's own containers run as.
                    containers: vec![Container {
                        name: PACK_CONTAINER.into(),
                        image: Some(cfg.init_image.clone()),
                        command: Some(vec!["gamezone-init".into()]),
                        args: Some(args),
                        env: Some(vec![
                            env("GAMEZONE_LAYERS", serde_json::to_string(&mount.layers)?),
                            env("GAMEZONE_REVISIONS", serde_json::to_string(pins)?),
                        ]),
                        volume_mounts: Some(mounts),
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        security_context: Some({
                            let mut sc = SecurityContext::default();
                            restrict(&mut sc);
                            sc
                        }),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    // Where the zone's first service type runs: nodes that reach the origins as
                    // its servers would.
                    node_selector: placement
                        .and_then(|t| (!t.node_selector.is_empty()).then(|| t.node_selector.clone())),
                    tolerations: placement.and_then(|t| (!t.tolerations.is_empty()).then(|| t.tolerations.clone())),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }))
}

/// The pod that pre-warms `node` with the zone's `tree` image before a rollout to it: pinned to
/// the node, it mounts the image (the node's runtime pulls each layer it lacks) and checks it
/// as a server's init container would, then ends. Restricted, tolerating every taint.
pub fn warm_pod(
    zone: &GameZone,
    pins: &[String],
    tree: &TreeImage,
    cfg: &BuildConfig,
    node: &str,
) -> Result<Option<Pod>> {
    let (Some(mount), TreeFrom::Image(tree)) = (artifacts_mount(zone)?, tree_from(zone, Some(tree), cfg)) else {
        return Ok(None);
    };
    let plan_env = vec![
        env("GAMEZONE_LAYERS", serde_json::to_string(&mount.layers)?),
        env("GAMEZONE_REVISIONS", serde_json::to_string(pins)?),
    ];
    let pod = image_pod(mount.root, tree, plan_env, cfg, Vec::new());
    let mut container = pod.init;
    container.name = WARM_CONTAINER.into();
    container.security_context = Some({
        let mut sc = SecurityContext::default();
        restrict(&mut sc);
        sc
    });
    let zone_name = zone.name_any();
    let mut labels = zone_labels(&zone_name);
    labels.insert(WARM_LABEL.into(), hash_of(&tree.image));
    Ok(Some(Pod {
        metadata: meta(zone, warm_pod_name(&zone_name, &hash_of(&node)), labels),
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            restart_policy: Some("Never".into()),
            containers: vec![container],
            volumes: Some(pod.volumes),
            image_pull_secrets: with_pull_secrets(zone, &pod.pull_secrets),
            tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    }))
}

/// The zone-wide ReadWriteMany claim for artifacts, when the zone asks for one.
pub fn artifacts_claim(zone: &GameZone) -> Option<PersistentVolumeClaim> {
    let shared = zone.spec.shared_artifacts.as_ref()?;
    let zone_name = zone.name_any();
    Some(PersistentVolumeClaim {
        metadata: meta(zone, artifacts_claim_name(&zone_name), zone_labels(&zone_name)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: shared.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(shared.size.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Identity of what a GameServer's pod is made from; a change replaces the pod.
pub fn server_template_hash(spec: &GameServerSpec) -> String {
    hash_of(&(&spec.template, &spec.ports))
}

/// Whether the pods of `a` and `b` are made from the same template: what
/// [`server_template_hash`] tells apart, compared without serializing and hashing both (a zone
/// compares each of its servers with the wanted one on every reconcile).
pub fn same_template(a: &GameServerSpec, b: &GameServerSpec) -> bool {
    a.template == b.template && a.ports == b.ports
}
