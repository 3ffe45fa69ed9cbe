//! Sends what the process asked for to the API server, sparingly: calls only change
//! [`Wanted`]; one task per sidecar writes the difference between it and the object, at most
//! once per [`WRITE_EVERY`] (Agones' rate), as merge patches carrying the resourceVersion they
//! were computed from, re-reading the object when the API server answers 409 Conflict.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::health::{Timing, Tracker};
use super::keys::{self, KeyError};
use super::wanted::{WEBHOOK_REASON, Wanted, WantedCondition};
use super::{Error, Result};
use crate::api::{GameServer, SdkState};

/// Agones' rate of SDK writes: at most one per half second per server.
pub const WRITE_EVERY: Duration = Duration::from_millis(500);

/// Conflicts in a row after which a write waits for the next change.
const CONFLICT_RETRIES: usize = 5;

/// Which part of the object a patch goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `metadata` (labels, annotations): the object itself.
    Metadata,
    /// `status`: the status subresource.
    Status,
}

/// Where the sidecar's GameServer lives: the API server, or memory in local mode.
pub trait Backend: Send + Sync + 'static {
    /// The object as it is now.
    fn get(&self) -> impl Future<Output = Result<GameServer>> + Send;
    /// Applies `body` (a merge patch of `part`) if the object is still at `resource_version`;
    /// [`Error::Conflict`] otherwise. Returns the object as written.
    fn patch(&self, resource_version: &str, part: Part, body: Value)
    -> impl Future<Output = Result<GameServer>> + Send;
}

/// One sidecar's shared state: what was asked, what the object shows, the health of pings.
pub struct Sdk {
    wanted: Mutex<Wanted>,
    /// Annotations shown to the process but never written (the artifacts digest).
    local: Mutex<std::collections::BTreeMap<String, String>>,
    observed: watch::Sender<Arc<GameServer>>,
    wake: Notify,
    health: Mutex<Option<Tracker>>,
}

impl Sdk {
    /// The sidecar for `server` as first read; health checks start counting from now.
    pub fn new(server: GameServer) -> Arc<Self> {
        let timing = Timing::of(server.spec.lifecycle.health.as_ref());
        Arc::new(Sdk {
            wanted: Mutex::new(Wanted::default()),
            local: Mutex::default(),
            health: Mutex::new(timing.map(|t| Tracker::new(t, tokio::time::Instant::now().into_std()))),
            observed: watch::Sender::new(Arc::new(server)),
            wake: Notify::new(),
        })
    }

    /// The object as last seen.
    pub fn server(&self) -> Arc<GameServer> {
        self.observed.borrow().clone()
    }

    /// The object now and on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<GameServer>> {
        self.observed.subscribe()
    }

    /// Takes `server` as the latest truth unless it is older than what is known (a watch
    /// event arriving after the response of a later write).
    pub fn observe(&self, mut server: GameServer) {
        self.show_local(&mut server);
        self.observed.send_if_modified(|current| {
            let version = |gs: &GameServer| gs.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
            let older = matches!((version(&server), version(current)), (Some(new), Some(old)) if new < old);
            if older
                || (current.metadata == server.metadata
                    && current.spec == server.spec
                    && current.status == server.status)
            {
                return false;
            }
            *current = Arc::new(server);
            true
        });
    }

    fn show_local(&self, server: &mut GameServer) {
        let local = self.local.lock().expect("local lock");
        if !local.is_empty() {
            let annotations = server.metadata.annotations.get_or_insert_with(Default::default);
            annotations.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// Shows annotation `key` on the server the process reads and watches, without writing it
    /// to the API server; watchers get the change at once.
    pub fn set_local_annotation(&self, key: &str, value: &str) {
        let changed = self.local.lock().expect("local lock").insert(key.into(), value.into()).as_deref() != Some(value);
        if changed {
            self.observed.send_modify(|current| {
                let mut gs = GameServer::clone(current);
                self.show_local(&mut gs);
                *current = Arc::new(gs);
            });
        }
    }

    /// What the process asked for so far.
    pub fn wanted(&self) -> Wanted {
        self.wanted.lock().expect("wanted lock").clone()
    }

    fn change(&self, f: impl FnOnce(&mut Wanted)) {
        f(&mut self.wanted.lock().expect("wanted lock"));
        self.wake.notify_one();
    }

    /// Says whose process speaks: `uid` of the sidecar's pod. Written at once, it also clears
    /// what a previous pod's process said.
    pub fn serve_pod(&self, uid: String) {
        self.change(|w| w.sdk = crate::api::SdkStatus { pod_uid: Some(uid), ..Default::default() });
    }

    /// Agones `Ready()`.
    pub fn ready(&self) {
        self.change(|w| w.request(SdkState::RequestReady, None, now()));
    }

    /// Agones `Allocate()`.
    pub fn allocate(&self) {
        self.change(|w| w.request(SdkState::Allocated, None, now()));
    }

    /// Agones `Shutdown()`.
    pub fn shutdown(&self) {
        self.change(|w| w.request(SdkState::Shutdown, None, now()));
    }

    /// Agones `Reserve(seconds)`: Reserved, then back to RequestReady when the time is up
    /// (unless something else was asked meanwhile); 0 reserves until changed.
    pub fn reserve(self: &Arc<Self>, seconds: i64) {
        let until = (seconds > 0).then(|| {
            let at = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(seconds);
            Time(whole_seconds(at))
        });
        self.change(|w| w.request(SdkState::Reserved, until.clone(), now()));
        if let Some(until) = until {
            let sdk = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
                let Some(sdk) = sdk.upgrade() else { return };
                sdk.change(|w| {
                    if w.sdk.state == Some(SdkState::Reserved) && w.sdk.reserved_until.as_ref() == Some(&until) {
                        w.request(SdkState::RequestReady, None, now());
                    }
                });
            });
        }
    }

    /// Agones/Carrier `SetLabel`: label `gamezone.dev/sdk-<key>`.
    pub fn set_label(&self, key: &str, value: &str) -> std::result::Result<(), KeyError> {
        let full = keys::prefixed(key)?;
        keys::label_value(key, value)?;
        self.change(|w| {
            w.labels.insert(full, value.into());
        });
        Ok(())
    }

    /// Agones/Carrier `SetAnnotation`: annotation `gamezone.dev/sdk-<key>`.
    pub fn set_annotation(&self, key: &str, value: &str) -> std::result::Result<(), KeyError> {
        let full = keys::prefixed(key)?;
        keys::annotation_value(key, value)?;
        self.change(|w| {
            w.annotations.insert(full, value.into());
        });
        Ok(())
    }

    /// Carrier `SetCondition`: condition `type_` of the status, `True`/`False`/`Unknown`; only
    /// one of the server's readiness or deletable gates (the API server admits no other).
    pub fn set_condition(&self, type_: &str, status: &str) -> std::result::Result<(), KeyError> {
        keys::condition(type_, status)?;
        let server = self.server();
        let l = &server.spec.lifecycle;
        if !l.readiness_gates.iter().chain(&l.deletable_gates).any(|g| g == type_) {
            let gates: Vec<&str> = l.readiness_gates.iter().chain(&l.deletable_gates).map(String::as_str).collect();
            let gates = if gates.is_empty() { "none".to_string() } else { gates.join(", ") };
            return Err(KeyError::NotAGate { key: type_.into(), gates });
        }
        self.change(|w| {
            w.conditions.insert(type_.into(), WantedCondition::by_process(status));
        });
        Ok(())
    }

    /// Sets gate condition `type_` from a gate webhook's answer.
    pub fn set_gate(&self, type_: &str, allowed: bool, message: String) {
        let status = if allowed { "True" } else { "False" };
        self.change(|w| {
            w.conditions.insert(
                type_.into(),
                WantedCondition { status: status.into(), reason: WEBHOOK_REASON.into(), message },
            );
        });
    }

    /// A health ping. Never a write by itself: the first ping's Healthy goes out with the next
    /// write for another reason; only a check that finds the process Unhealthy writes.
    pub fn ping(&self) {
        let mut health = self.health.lock().expect("health lock");
        if let Some(h) = health.as_mut().and_then(|t| t.ping(tokio::time::Instant::now().into_std())) {
            self.wanted.lock().expect("wanted lock").health(h, now());
        }
    }

    /// Runs the health checks until the sidecar stops (returns at once when disabled).
    pub async fn check_health(self: Arc<Self>) {
        let Some((first, period)) =
            self.health.lock().expect("health lock").as_ref().map(|t| (t.first_check(), t.timing().period))
        else {
            return;
        };
        let mut ticks = tokio::time::interval_at(first.into(), period);
        loop {
            ticks.tick().await;
            let at = tokio::time::Instant::now().into_std();
            let changed = self.health.lock().expect("health lock").as_mut().and_then(|t| t.check(at));
            if let Some(h) = changed {
                tracing::warn!(health = ?h, "health pings missed");
                self.change(|w| w.health(h, now()));
            }
        }
    }

    /// Writes what is wanted to `backend` until the sidecar stops: on every call and every
    /// change of the object, at most once per `every`.
    pub async fn write_loop<B: Backend>(self: Arc<Self>, backend: B, every: Duration) {
        let mut changes = self.subscribe();
        // Tokio's clock, which tests can pause.
        let mut last: Option<tokio::time::Instant> = None;
        // What was still missing right after a write that succeeded: the object does not keep
        // it (a webhook, another writer), so only a new call tries again.
        let mut refused = None;
        loop {
            let called = tokio::select! {
                () = self.wake.notified() => true,
                r = changes.changed() => if r.is_err() { return } else { false },
            };
            let pending = self.pending();
            if pending.is_empty() || (!called && refused.as_ref() == Some(&pending)) {
                continue;
            }
            if let Some(at) = last {
                // Calls arriving meanwhile join this write.
                tokio::time::sleep_until(at + every).await;
            }
            last = Some(tokio::time::Instant::now());
            let result = self.write_once(&backend).await;
            let after = self.pending();
            refused = (result.is_ok() && !after.is_empty()).then(|| {
                tracing::warn!(missing = ?after, "the GameServer does not show what was written; trying again on the next call");
                after
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, "writing the GameServer failed; retrying");
                let sdk = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    sdk.wake.notify_one();
                });
            }
        }
    }

    fn pending(&self) -> super::wanted::Patches {
        let observed = self.server();
        self.wanted.lock().expect("wanted lock").patches(&observed, &now())
    }

    /// Writes what the object lacks, re-reading it on conflicts.
    pub async fn write_once<B: Backend>(&self, backend: &B) -> Result<()> {
        for _ in 0..CONFLICT_RETRIES {
            let patches = self.pending();
            let mut version = self.server().metadata.resource_version.clone().unwrap_or_default();
            let mut result = Ok(());
            for (part, body) in [(Part::Metadata, patches.metadata), (Part::Status, patches.status)] {
                let Some(body) = body else { continue };
                let key = if part == Part::Metadata { "metadata" } else { "status" };
                let body = match (part, body) {
                    (Part::Metadata, Value::Object(mut m)) => {
                        m.insert("resourceVersion".into(), json!(version));
                        json!({ key: m })
                    }
                    (_, b) => json!({ "metadata": { "resourceVersion": version }, key: b }),
                };
                match backend.patch(&version, part, body).await {
                    Ok(written) => {
                        version = written.metadata.resource_version.clone().unwrap_or_default();
                        self.observe(written);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match result {
                Err(Error::Conflict) => {
                    tracing::debug!("GameServer changed meanwhile; re-reading it");
                    let fresh = backend.get().await?;
                    self.observe(fresh);
                }
                other => return other,
            }
        }
        Err(Error::Conflict)
    }
}

/// Now, in whole seconds: the API server keeps times to the second, and a wanted time finer
/// than that would never match what the object shows.
fn now() -> Time {
    Time(whole_seconds(k8s_openapi::jiff::Timestamp::now()))
}

fn whole_seconds(t: k8s_openapi::jiff::Timestamp) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(t.as_second()).expect("a time in range")
}

/// A GameServer in memory, as an API server would keep it: merge patches, resourceVersion
/// preconditions, a count of writes. The local mode's backend, and the benchmark's.
#[derive(Default)]
pub struct Memory {
    inner: Mutex<(Value, u64)>,
    writes: std::sync::atomic::AtomicU64,
}

impl Memory {
    /// Holds `server`.
    pub fn new(server: &GameServer) -> Self {
        let m = Memory::default();
        m.replace(server);
        m
    }

    /// Replaces the object (an edit of the local file); returns it with its new version.
    pub fn replace(&self, server: &GameServer) -> GameServer {
        let mut inner = self.inner.lock().expect("memory lock");
        inner.1 += 1;
        let mut v = serde_json::to_value(server).expect("GameServer serializes");
        v["metadata"]["resourceVersion"] = json!(inner.1.to_string());
        inner.0 = v;
        serde_json::from_value(inner.0.clone()).expect("a GameServer")
    }

    /// Writes accepted so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> Result<GameServer> {
        Ok(serde_json::from_value(self.inner.lock().expect("memory lock").0.clone())?)
    }
}

impl Backend for Arc<Memory> {
    async fn get(&self) -> Result<GameServer> {
        self.current()
    }

    async fn patch(&self, resource_version: &str, part: Part, mut body: Value) -> Result<GameServer> {
        {
            let mut inner = self.inner.lock().expect("memory lock");
            if inner.1.to_string() != resource_version {
                return Err(Error::Conflict);
            }
            // As the status subresource does: only status there, never status elsewhere.
            let keep = if part == Part::Status { "status" } else { "metadata" };
            if let Value::Object(m) = &mut body {
                m.retain(|k, _| k == keep || k == "metadata");
                if part == Part::Status {
                    m.remove("metadata");
                }
            }
            super::wanted::merge(&mut inner.0, &body);
            inner.1 += 1;
            let version = inner.1.to_string();
            inner.0["metadata"]["resourceVersion"] = json!(version);
            self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GameServerSpec;

    fn memory() -> (Arc<Sdk>, Arc<Memory>) {
        let gs = GameServer::new("local", GameServerSpec::default());
        let mem = Arc::new(Memory::new(&gs));
        let sdk = Sdk::new(mem.current().unwrap());
        (sdk, mem)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_calls_is_a_few_writes_and_every_call_lands() {
        let (sdk, mem) = memory();
        tokio::spawn(sdk.clone().write_loop(mem.clone(), WRITE_EVERY));
        for i in 0..100 {
            sdk.set_label("round", &i.to_string()).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sdk.ready();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gs = mem.get().await.unwrap();
        assert_eq!(gs.metadata.labels.unwrap()["gamezone.dev/sdk-round"], "99");
        assert_eq!(gs.status.unwrap().sdk.unwrap().state, Some(SdkState::RequestReady));
        // One second of calls at one write per half second (the last one with two parts).
        let writes = mem.writes();
        assert!((2..=5).contains(&writes), "{writes} writes for 101 calls");
    }

    #[tokio::test]
    async fn a_conflict_rereads_and_writes_on_the_fresh_object() {
        let (sdk, mem) = memory();
        // Someone else writes after the sidecar read the object.
        let mut other = mem.get().await.unwrap();
        other.metadata.labels = Some([("team".to_string(), "red".to_string())].into());
        mem.replace(&other);
        sdk.set_label("mode", "ctf").unwrap();
        sdk.write_once(&mem).await.unwrap();
        let labels = mem.get().await.unwrap().metadata.labels.unwrap();
        assert_eq!((labels["team"].as_str(), labels["gamezone.dev/sdk-mode"].as_str()), ("red", "ctf"));
    }

    #[test]
    fn bad_keys_are_refused_before_anything_is_wanted() {
        let (sdk, _) = memory();
        assert!(sdk.set_label("no spaces", "x").is_err());
        assert!(sdk.set_condition("ready", "maybe").is_err());
        assert_eq!(sdk.wanted(), Wanted::default());
    }
}
