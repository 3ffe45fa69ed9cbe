//! The one place the reconcilers write through, and what it remembers of its writes, so a
//! reconcile that reads a watch lagging behind its own writes does not write the same thing
//! again. Every write is an API request, and the API server's work per request is what bounds
//! how fast zones come up.
//!
//! Reconcilers say "apply this child", "delete these" or "write this status"; the rules (skip
//! what was applied moments ago and forget it once deleted, never touch what another object
//! controls, build on a status the watch does not show yet, spare routine writes) live here.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::key::ObjectKey;
use crate::api::{GameServer, GameServerStatus, GameZone, GameZoneStatus, MANAGER};
use crate::conditions::server_types;
use crate::zone::hash_of;
use crate::{Error, Result};

/// Progress-only status writes per second, across all zones and servers.
const ROUTINE_WRITES_PER_SECOND: f64 = 5.0;

/// How often a zone's status is written when only its counts and messages move.
pub const COUNTS_EVERY: Duration = Duration::from_secs(5);

/// Writes children and statuses for the reconcilers, sparing the API server what it already has.
pub struct Writer {
    client: Client,
    applied: Applied,
    zone_status: Statuses<ObjectKey, GameZoneStatus>,
    server_status: Statuses<ObjectKey, GameServerStatus>,
    routine: Budget,
}

/// What became of a status write.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// The status was already what the object shows.
    Unchanged,
    /// It was written.
    Written,
    /// Only counts moved and such a write was made moments ago (or the routine budget is
    /// spent): it waits for the next reconcile, due within the given time.
    Deferred(Duration),
}

/// How the operator applies: its one field manager, taking over fields others set.
///
/// Field validation is off: every body is serialized from typed objects, so it cannot hold a
/// duplicate or misspelt field, and the API server's default (`Warn`) parses each apply body a
/// second time to look for them (4% of the API server's CPU while zones come up), for warnings
/// no one reads.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force().validation_ignore()
}

/// Server-side applies `obj` with the operator's field manager.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &apply_params(), &Patch::Apply(obj)).await?)
}

/// Server-side applies a status with the operator's field manager; returns the object's new
/// resourceVersion.
async fn apply_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<Option<String>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = api.patch_status(name, &apply_params(), &Patch::Apply(&body)).await?;
    Ok(written.meta().resource_version.clone())
}

impl Writer {
    /// A writer for `client`, remembering nothing yet.
    pub fn new(client: Client) -> Self {
        Writer {
            client,
            applied: Applied::default(),
            zone_status: Statuses::default(),
            server_status: Statuses::default(),
            routine: Budget::new(ROUTINE_WRITES_PER_SECOND),
        }
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Applies `obj` unless this process applied the same content less than `fresh_for` ago.
    /// A zone is reconciled on every change of its servers' status; re-applying unchanged
    /// children each time would multiply the API calls for nothing.
    pub async fn apply_child<K: Child>(&self, obj: &K, fresh_for: Duration) -> Result<()> {
        self.write_child(obj, fresh_for, Known::Unknown).await
    }

    /// As [`Writer::apply_child`], for a child the shared watch shows controlled by its zone: its
    /// owner needs no reading.
    pub async fn apply_own_child<K: Child>(&self, obj: &K, fresh_for: Duration) -> Result<()> {
        self.write_child(obj, fresh_for, Known::Ours).await
    }

    /// As [`Writer::apply_child`], for a child that is usually new: created (a POST, see
    /// [`super::ownership`]) unless this process wrote it before.
    pub async fn create_child<K: Child>(&self, obj: &K, fresh_for: Duration) -> Result<()> {
        self.write_child(obj, fresh_for, Known::New).await
    }

    /// The step both share: nothing when just written, else a create or an apply. A child this
    /// process has not written yet may be someone else's: it is created, or its owner is read
    /// first, and one held by another is never applied over.
    async fn write_child<K: Child>(&self, obj: &K, fresh_for: Duration, known: Known) -> Result<()> {
        let hash = hash_of(obj);
        if self.applied_recently(obj, &hash, fresh_for) {
            return Ok(());
        }
        if !self.applied.knows(&applied_key(obj)) {
            match known {
                Known::New => return self.create_as(obj, hash).await,
                Known::Unknown => {
                    let api = self.api::<K>(&obj.namespace().unwrap_or_default());
                    match api.get_metadata_opt(&obj.name_any()).await? {
                        None => return self.create_as(obj, hash).await,
                        Some(existing) => check_owner(&existing.metadata, obj)?,
                    }
                }
                Known::Ours => {}
            }
        }
        self.apply_as(obj, hash).await.map(|_| ())
    }

    /// Creates `obj`, a child the operator never changes once made (a pod, a Job), and returns
    /// it. One that exists already (made by an earlier reconcile the watch has not shown yet) is
    /// returned as it is, if it is the operator's: another's is never adopted.
    pub async fn create_once<K: Child>(&self, obj: &K) -> Result<K> {
        let api = self.api::<K>(&obj.namespace().unwrap_or_default());
        let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.create(&params, obj).await {
            Ok(created) => Ok(created),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = api.get(&obj.name_any()).await?;
                check_owner(existing.meta(), obj)?;
                Ok(existing)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether this process applied content hashed `hash` to `obj` less than `within` ago.
    pub fn applied_recently<K: Resource<DynamicType = ()>>(&self, obj: &K, hash: &str, within: Duration) -> bool {
        self.applied.recent(&applied_key(obj), hash, within)
    }

    /// Creates `obj` (a POST, see [`super::ownership`]) and remembers it as content `hash`. One
    /// that exists already (made moments ago, before the watch showed it, or before a restart)
    /// is applied instead, if it is the operator's: one held by another is left as it is
    /// ([`Error::NameConflict`]).
    pub async fn create_as<K: Child>(&self, obj: &K, hash: String) -> Result<()> {
        let api = self.api::<K>(&obj.namespace().unwrap_or_default());
        let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.create(&params, obj).await {
            Ok(_) => {
                self.applied.record(applied_key(obj), hash);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {
                if let Some(existing) = api.get_metadata_opt(&obj.name_any()).await? {
                    check_owner(&existing.metadata, obj)?;
                }
                self.apply_as(obj, hash).await.map(|_| ())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies `obj` and remembers it as content `hash`. On an object the operator created by
    /// POST, the create's fields then go to its apply and it applies again, so fields the new
    /// content drops go.
    pub async fn apply_as<K: Child>(&self, obj: &K, hash: String) -> Result<K> {
        tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), "applying");
        let api = self.api::<K>(&obj.namespace().unwrap_or_default());
        let mut written = apply(&api, obj).await?;
        // The hand-over holds only on the version just read; someone writing in between (the
        // SDK sidecar, a person) makes it fail, and it is tried once more on what the next
        // apply returns.
        for attempt in 1..=2 {
            let Some(upgrade) = super::ownership::upgrade(written.meta()) else { break };
            let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match api.patch(&written.name_any(), &params, &Patch::Json::<()>(upgrade)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if attempt == 1 && (e.code == 422 || e.code == 409) => {}
                Err(e) => return Err(e.into()),
            }
            written = apply(&api, obj).await?;
        }
        self.applied.record(applied_key(obj), hash);
        Ok(written)
    }

    /// Forgets what was applied to `obj`.
    pub fn forget_child<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.applied.forget(&applied_key(obj));
    }

    /// Sets the labels and annotations of `marks` on `name` in `namespace` (a merge patch of
    /// its metadata: nothing else changes, so a pod keeps running); one already gone is fine.
    pub async fn patch_metadata<K: Child>(&self, namespace: &str, name: &str, marks: &ObjectMeta) -> Result<()> {
        // ObjectMeta leaves its absent fields out: a map not given is left alone, not cleared
        // (a merge patch's null would delete it).
        let body = serde_json::json!({"metadata": marks});
        match self.api::<K>(namespace).patch(name, &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `name` in `namespace`; one already gone is fine (the watch this process reads
    /// may lag behind). What was applied to it is forgotten.
    pub async fn delete<K: Child>(&self, namespace: &str, name: &str) -> Result<()> {
        self.delete_with::<K>(namespace, name, &DeleteParams::default()).await
    }

    /// Deletes `name` in `namespace` with no grace period: the object is gone from the API at
    /// once. For a pod whose node's kubelet is unheard, which would never confirm a graceful
    /// deletion; the kubelet stops what is left of it if it comes back.
    pub async fn delete_at_once<K: Child>(&self, namespace: &str, name: &str) -> Result<()> {
        self.delete_with::<K>(namespace, name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
    }

    async fn delete_with<K: Child>(&self, namespace: &str, name: &str, params: &DeleteParams) -> Result<()> {
        self.applied.forget(&child_key::<K>(namespace, name));
        match self.api::<K>(namespace).delete(name, params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `name` in `namespace` if `owner` controls it; anything else of that name is
    /// left alone.
    pub async fn delete_if_owned<K: Child>(&self, namespace: &str, name: &str, owner: &ObjectMeta) -> Result<()> {
        match self.api::<K>(namespace).get_metadata_opt(name).await? {
            Some(m) if super::ownership::controlled_by(&m.metadata, owner) => self.delete::<K>(namespace, name).await,
            _ => Ok(()),
        }
    }

    /// Deletes the objects `lp` selects in `namespace` that `owned` says are the caller's: in
    /// one request when all of them are (the usual case), else one by one, leaving the others.
    /// Someone able to label an object between the list and the collection delete could also
    /// delete it themselves.
    pub async fn delete_all_owned<K: Child>(
        &self,
        namespace: &str,
        lp: &ListParams,
        owned: impl Fn(&ObjectMeta) -> bool,
    ) -> Result<()> {
        let api = self.api::<K>(namespace);
        let listed = api.list_metadata(lp).await?.items;
        if !listed.iter().all(|o| owned(&o.metadata)) {
            for o in listed.iter().filter(|o| owned(&o.metadata)) {
                self.delete::<K>(namespace, &o.name_any()).await?;
            }
            return Ok(());
        }
        if !listed.is_empty() {
            for o in &listed {
                self.applied.forget(&child_key::<K>(namespace, &o.name_any()));
            }
            // In the background: the garbage collector removes dependents.
            let background =
                DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            api.delete_collection(&background, lp).await?;
        }
        Ok(())
    }

    /// The zone status to build on: the watch's copy, or what this process wrote moments ago
    /// when the watch does not show it yet.
    pub fn zone_base(&self, zone: &GameZone) -> GameZoneStatus {
        let version = zone.metadata.resource_version.as_deref();
        self.zone_status.base(&ObjectKey::of(zone), version, zone.status.as_ref()).unwrap_or_default()
    }

    /// Writes `after` as the zone's status when it differs from `before`. While servers come up
    /// one by one, a zone's counts are written at most every [`COUNTS_EVERY`], within the
    /// routine write budget; any other change (phase, a condition's status or reason) at once.
    pub async fn zone_status(
        &self,
        zone: &GameZone,
        before: &GameZoneStatus,
        after: &GameZoneStatus,
    ) -> Result<StatusWrite> {
        if after == before {
            return Ok(StatusWrite::Unchanged);
        }
        let key = ObjectKey::of(zone);
        if only_counts_changed(before, after)
            && (self.zone_status.written_within(&key, COUNTS_EVERY) || !self.routine.take())
        {
            return Ok(StatusWrite::Deferred(COUNTS_EVERY));
        }
        tracing::debug!(zone = %key, phase = ?after.phase, ready = after.ready_servers, "writing status");
        let api = self.api::<GameZone>(key.namespace());
        let version = apply_status(&api, key.name(), serde_json::to_value(after)?).await?;
        self.zone_status.record(key, version, after.clone());
        Ok(StatusWrite::Written)
    }

    /// Forgets the zone's written statuses.
    pub fn forget_zone(&self, zone: &GameZone) {
        self.zone_status.forget(&ObjectKey::of(zone));
    }

    /// The server status to build on (see [`Writer::zone_base`]).
    pub fn server_base(&self, gs: &GameServer) -> GameServerStatus {
        let version = gs.metadata.resource_version.as_deref();
        let base = self.server_status.base(&ObjectKey::of(gs), version, gs.status.as_ref()).unwrap_or_default();
        crate::server::with_others_fields(base, gs.status.as_ref())
    }

    /// Writes the server's status. Of its conditions only the operator's own are written: gate
    /// conditions belong to whoever set them (the game through the SDK, a webhook), and each
    /// condition is its own entry for server-side apply. `status.sdk` is the SDK sidecar's.
    pub async fn server_status(&self, gs: &GameServer, status: &GameServerStatus) -> Result<()> {
        let key = ObjectKey::of(gs);
        let api = self.api::<GameServer>(key.namespace());
        let mut owned = status.clone();
        owned.conditions.retain(|c| server_types::OPERATOR_OWNED.contains(&c.type_.as_str()));
        // The sidecar's: the operator reads it and never writes it back.
        owned.sdk = None;
        let version = apply_status(&api, key.name(), serde_json::to_value(&owned)?).await?;
        self.server_status.record(key, version, status.clone());
        Ok(())
    }

    /// Forgets the server's written statuses.
    pub fn forget_server(&self, gs: &GameServer) {
        self.server_status.forget(&ObjectKey::of(gs));
    }

    /// Takes one routine (progress-only) write from the budget shared by every object: with
    /// hundreds of zones coming up at once, each one reports less often. False when spent.
    pub fn routine_write(&self) -> bool {
        self.routine.take()
    }
}

/// What the caller of a child's first write knows of it, which says how the writer checks that
/// an object of that name is not someone else's.
enum Known {
    /// Usually new: created by POST; an existing one's owner is read on the conflict.
    New,
    /// May exist, owner unknown: read first.
    Unknown,
    /// The shared watch shows it controlled by its zone.
    Ours,
}

/// What the writer creates and applies: a namespaced object it can serialize and read back.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + std::fmt::Debug
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// `Err(NameConflict)` unless `existing` is the object the operator would write as `wanted`.
pub fn check_owner<K: Resource<DynamicType = ()>>(
    existing: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    wanted: &K,
) -> Result<()> {
    match super::ownership::held_by_other(existing, wanted.meta()) {
        None => Ok(()),
        Some(held) => Err(Error::NameConflict { kind: K::kind(&()).into_owned(), name: wanted.name_any(), held }),
    }
}

/// Memo key of a child object.
fn applied_key<K: Resource<DynamicType = ()>>(obj: &K) -> ChildKey {
    child_key::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any())
}

/// Memo key of the child of kind `K` named `name` in `namespace`.
fn child_key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ChildKey {
    (K::kind(&()), ObjectKey::new(namespace, name))
}

/// Whether `after` differs from `before` only in counts and messages.
pub fn only_counts_changed(before: &GameZoneStatus, after: &GameZoneStatus) -> bool {
    fn shape(s: &GameZoneStatus) -> impl PartialEq + '_ {
        let conditions: Vec<_> = s.conditions.iter().map(|c| (&c.type_, &c.status, &c.reason)).collect();
        (s.phase, s.observed_generation, conditions, &s.artifacts, &s.migration, s.desired_servers)
    }
    shape(before) == shape(after)
}

/// How long a write may take to show in the shared watches.
pub const WATCH_LAG: Duration = Duration::from_secs(10);

/// Content hashes of the child objects this process applied, by `kind/namespace/name`, with
/// when. A zone is reconciled on every change of its servers' status; writing unchanged
/// children each time would multiply the API calls for nothing.
#[derive(Default)]
struct Applied(Mutex<HashMap<ChildKey, (String, Instant)>>);

/// A child object's kind and key.
type ChildKey = (Cow<'static, str>, ObjectKey);

impl Applied {
    /// Whether `hash` is what was applied to `key` less than `within` ago.
    fn recent(&self, key: &ChildKey, hash: &str, within: Duration) -> bool {
        let map = self.0.lock().expect("applied cache lock");
        map.get(key).is_some_and(|(h, at)| h == hash && at.elapsed() < within)
    }

    /// Records that `hash` was applied to `key` now.
    fn record(&self, key: ChildKey, hash: String) {
        self.0.lock().expect("applied cache lock").insert(key, (hash, Instant::now()));
    }

    /// Whether anything was recorded for `key`.
    fn knows(&self, key: &ChildKey) -> bool {
        self.0.lock().expect("applied cache lock").contains_key(key)
    }

    /// Forgets `key`.
    fn forget(&self, key: &ChildKey) {
        self.0.lock().expect("applied cache lock").remove(key);
    }
}

/// The status this process last wrote per object, with the resourceVersion the write returned,
/// until the watch shows it.
struct Statuses<Key, S>(Mutex<HashMap<Key, Written<S>>>);

struct Written<S> {
    resource_version: Option<String>,
    /// Dropped once the watch showed the write.
    status: Option<S>,
    at: Instant,
}

impl<Key, S> Default for Statuses<Key, S> {
    fn default() -> Self {
        Statuses(Mutex::new(HashMap::new()))
    }
}

impl<Key: Hash + Eq, S: Clone> Statuses<Key, S> {
    /// The status to build on: `live` (the watch's copy at `live_version`), unless this process
    /// wrote a status less than [`WATCH_LAG`] ago that the watch has not shown yet.
    fn base(&self, key: &Key, live_version: Option<&str>, live: Option<&S>) -> Option<S> {
        let mut map = self.0.lock().expect("status memo lock");
        let Some(w) = map.get_mut(key) else { return live.cloned() };
        if w.resource_version.as_deref() == live_version {
            // The watch has caught up: from here on it is the truth. The time of the write is
            // kept for throttling.
            w.status = None;
        } else if w.at.elapsed() >= WATCH_LAG {
            map.remove(key);
        } else if let Some(s) = &w.status {
            return Some(s.clone());
        }
        live.cloned()
    }

    /// Whether this process wrote `key`'s status less than `within` ago.
    fn written_within(&self, key: &Key, within: Duration) -> bool {
        self.0.lock().expect("status memo lock").get(key).is_some_and(|w| w.at.elapsed() < within)
    }

    /// Records that `status` was written to `key` now, giving the object `resource_version`.
    fn record(&self, key: Key, resource_version: Option<String>, status: S) {
        let written = Written { resource_version, status: Some(status), at: Instant::now() };
        self.0.lock().expect("status memo lock").insert(key, written);
    }

    /// Forgets `key`.
    fn forget(&self, key: &Key) {
        self.0.lock().expect("status memo lock").remove(key);
    }
}

/// An allowance of routine writes per second shared by many objects (a token bucket), so
/// that how often they are written together does not grow with how many there are.
struct Budget {
    per_second: f64,
    left: Mutex<(f64, Instant)>,
}

impl Budget {
    /// An allowance of `per_second` writes, at most one second's worth saved up.
    fn new(per_second: f64) -> Self {
        Budget { per_second, left: Mutex::new((per_second, Instant::now())) }
    }

    /// Takes one write from the allowance; false when it is spent for now.
    fn take(&self) -> bool {
        let mut left = self.left.lock().expect("budget lock");
        let (tokens, at) = &mut *left;
        *tokens = (*tokens + at.elapsed().as_secs_f64() * self.per_second).min(self.per_second);
        *at = Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_a_second_s_worth_then_refills() {
        let budget = Budget::new(5.0);
        assert_eq!((0..20).filter(|_| budget.take()).count(), 5);
        std::thread::sleep(Duration::from_millis(450));
        let refilled = (0..20).filter(|_| budget.take()).count();
        assert!((2..=3).contains(&refilled), "{refilled} writes after 0.45 s at 5/s");
    }

    #[test]
    fn a_lagging_watch_yields_the_status_written_and_a_current_one_its_own() {
        let memo: Statuses<&str, &str> = Statuses::default();
        assert_eq!(memo.base(&"a", Some("1"), Some(&"old")), Some("old"));
        memo.record("a", Some("2".into()), "new");
        // The watch still shows version 1: build on what was written.
        assert_eq!(memo.base(&"a", Some("1"), Some(&"old")), Some("new"));
        // The watch shows the write: it is the truth, and the write's time is still known.
        assert_eq!(memo.base(&"a", Some("2"), Some(&"new")), Some("new"));
        assert!(memo.written_within(&"a", Duration::from_secs(60)));
        // Later changes by others show as they are.
        assert_eq!(memo.base(&"a", Some("3"), Some(&"edited")), Some("edited"));
        memo.forget(&"a");
        assert!(!memo.written_within(&"a", Duration::from_secs(60)));
    }
}
