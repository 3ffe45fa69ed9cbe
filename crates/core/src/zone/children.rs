//! One list of every object a zone makes. `gamezone render` prints it and the zone controller
//! forgets it when the zone goes, so neither can leave a kind out.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use std::collections::BTreeMap;

use super::{
    BuildConfig, artifacts_claim, disruption_budget, edits_claim, edits_deployment, game_servers, migration_job,
    needs_sdk, pack_job, services, sidecar_identity, topology,
};
use crate::Result;
use crate::api::{GameServer, GameZone};

/// Every object a zone makes, built offline for the layer revisions `pins`.
#[derive(Clone, Debug)]
pub struct Children {
    /// The SDK sidecar's ServiceAccount, Role and RoleBinding, when a service type runs the sidecar.
    pub sidecar_identity: Option<(ServiceAccount, Role, RoleBinding)>,
    /// The zone-wide artifacts claim (`spec.sharedArtifacts`).
    pub artifacts_claim: Option<PersistentVolumeClaim>,
    /// The edits share's claim and its Samba Deployment (`spec.edits`).
    pub edits: Option<(PersistentVolumeClaim, Deployment)>,
    /// The pack Job of these revisions (with an artifact registry).
    pub pack: Option<Job>,
    /// The migration Job of these revisions (`spec.migration`).
    pub migration: Option<Job>,
    /// One GameServer per id of each service type.
    pub servers: Vec<GameServer>,
    /// The headless Service and those `expose` asks for.
    pub services: Vec<Service>,
    /// The topology, listing no ports: the controller lists each server's once it holds them.
    pub topology: ConfigMap,
    /// What refuses evictions of the servers that may hold players.
    pub disruption_budget: PodDisruptionBudget,
}

/// The SDK sidecar's identity, when one of the zone's types runs the sidecar.
pub fn sidecar_identity_if_needed(zone: &GameZone) -> Option<(ServiceAccount, Role, RoleBinding)> {
    zone.spec.services.iter().any(needs_sdk).then(|| sidecar_identity(zone))
}

/// Every object `zone` makes for the layer revisions `pins` (empty strings when not pinned yet:
/// the names are the same) and their packed `tree`, once packed.
pub fn children(
    zone: &GameZone,
    pins: &[String],
    tree: Option<&crate::api::artifacts::TreeImage>,
    cfg: &BuildConfig,
) -> Result<Children> {
    Ok(Children {
        sidecar_identity: sidecar_identity_if_needed(zone),
        artifacts_claim: artifacts_claim(zone),
        edits: edits_claim(zone).zip(edits_deployment(zone, cfg)),
        pack: pack_job(zone, pins, cfg)?,
        migration: migration_job(zone, pins, tree, cfg)?,
        servers: game_servers(zone, pins, tree, cfg)?,
        services: services(zone),
        topology: topology(zone, &BTreeMap::new()),
        disruption_budget: disruption_budget(zone),
    })
}
