//! Layer pins in an OCI registry: fetched from their origin once, then copied from the registry.
//!
//! [`pack`] builds each layer of a plan at its pin (its `path` and `subPath` applied, hostile
//! input refused as for any apply) and pushes what it places in the tree as one OCI layer; a
//! layer already in the registry is not fetched again. `apply` with a [`Registry`] fills the
//! tree from those layers and never asks an origin, so an origin outage does not stop a pod.
//!
//! One repository holds every packed layer. A layer's tag is its [`layer_key`]: the layer as the
//! plan states it (source, `path`, `subPath`; not which Secret holds its credentials) and its
//! pin, so the same pin in any zone is packed once. The tag names a one-layer image manifest
//! whose layer is an uncompressed tar of the layer's files, directories and symlinks at their
//! paths in the tree, in path order, owned by 0, dated 0: the same files make the same bytes, so
//! containerd can mount it as an `image` volume and a re-pack pushes nothing new. The manifest
//! lists a second blob, the layer's listing ([`LISTING_MEDIA_TYPE`]): each entry's path, mode,
//! size and content hash, so the digest of a tree that layer is part of is computed from a few
//! bytes per file instead of the layer's whole tar.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::error::{Ctx, Error};
use crate::plan::Layer;
use crate::tree::{Kind, TreeWriter};
use crate::{Result, paths};

/// Annotation of a packed layer's manifest: the digest of the tree the layer alone makes; of a
/// tree image's: the digest of the tree its layers make together.
pub const TREE_DIGEST_ANNOTATION: &str = "dev.gamezone.tree-digest";
/// Annotation of a tree image's manifest: the shape of its tree (`path mode size` lines), which
/// a pod checks its mount against with one `lstat` per entry.
pub const TREE_SHAPE_ANNOTATION: &str = "dev.gamezone.tree-shape";
/// Annotation of a packed layer's manifest: the layer's source as `describe` writes it.
pub const SOURCE_ANNOTATION: &str = "dev.gamezone.source";
/// Annotation of a packed layer's manifest: the pin it was packed at.
pub const PIN_ANNOTATION: &str = "dev.gamezone.pin";
/// Media type of a packed layer's listing: a JSON array of `[path, mode, size, sha256]`, the
/// entries of the tree the layer alone makes (as the tree digest reads them).
pub const LISTING_MEDIA_TYPE: &str = "application/vnd.gamezone.layer-listing.v1+json";

/// Where packed layers live: `host[:port]/repository`, and how to reach it.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `host[:port]/path` of the one repository that holds every packed layer.
    pub repository: String,
    /// Speak plain HTTP (a registry on loopback or inside the cluster without TLS).
    pub plain_http: bool,
    /// Basic credentials (user, password); anonymous when empty.
    pub basic: Option<(String, String)>,
}

impl RegistryOptions {
    /// The options for `repository`, with the credentials a Docker config JSON file (a
    /// dockerconfigjson Secret's `.dockerconfigjson`) holds for its host when `auth` names one.
    pub fn with_docker_config(
        repository: &str,
        plain_http: bool,
        auth: Option<&Path>,
    ) -> std::result::Result<RegistryOptions, String> {
        let host = repository.split('/').next().unwrap_or_default();
        let basic = match auth {
            Some(file) => {
                let text = fs::read_to_string(file).map_err(|e| format!("read {}: {e}", file.display()))?;
                let basic = basic_from_docker_config(&text, host).map_err(|e| format!("{}: {e}", file.display()))?;
                Some(
                    basic.ok_or_else(|| {
                        format!("{} has no credentials for {host}; add auths.\"{host}\"", file.display())
                    })?,
                )
            }
            None => None,
        };
        Ok(RegistryOptions { repository: repository.to_owned(), plain_http, basic })
    }
}

/// A client of the repository that holds packed layers.
#[derive(Clone)]
pub struct Registry {
    client: Arc<Client>,
    repository: String,
    auth: RegistryAuth,
    options: RegistryOptions,
}

/// A tag of the repository and the manifest it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    /// The tag.
    pub tag: String,
    /// The manifest's digest.
    pub digest: String,
    /// Its layers' digests, in order.
    pub layers: Vec<String>,
}

/// A packed layer as its manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    /// The tag: [`layer_key`].
    pub key: String,
    /// The layer blob's digest (`sha256:…`).
    pub digest: String,
    /// The layer blob's size in bytes.
    pub size: u64,
    /// The digest of the tree this layer alone makes.
    pub tree_digest: String,
    /// The listing blob (digest, size); none in layers packed before listings were.
    pub listing: Option<(String, u64)>,
}

/// What [`pack`] did with one layer of the plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackOutcome {
    /// The layer's index in the plan.
    pub layer: usize,
    /// Its tag in the repository ([`layer_key`]).
    pub key: String,
    /// The layer blob's digest.
    pub digest: String,
    /// The layer blob's size in bytes.
    pub size: u64,
    /// The digest of the tree the layer alone makes.
    pub tree_digest: String,
    /// Whether this run fetched it from its origin (false: the registry held it already).
    pub fetched: bool,
    /// The listing blob (digest, size), when the layer has one.
    #[serde(skip)]
    pub listing: Option<(String, u64)>,
}

pub use gamezone_api::artifacts::TreeImage;

/// What [`pack`] did: each layer, and the tree image listing them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Packing {
    pub layers: Vec<PackOutcome>,
    pub tree: TreeImage,
    /// This process's peak resident memory (VmHWM), when Linux tells it: a pack streams, so it
    /// stays flat in the layers' size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
}

/// This process's peak resident memory in bytes (`VmHWM` of /proc/self/status).
fn peak_memory() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl PackOutcome {
    fn new(layer: usize, p: Packed, fetched: bool) -> Self {
        let Packed { key, digest, size, tree_digest, listing } = p;
        PackOutcome { layer, key, digest, size, tree_digest, fetched, listing }
    }
}

/// Packs every layer of the plan at its pin (`opts.revisions`, as `resolve` prints them) into
/// the registry, in plan order. A layer the registry holds already is not fetched. Each other
/// one is built alone under `opts.root` (its checks and limits as for any apply), written as a
/// tar beside it and pushed as a stream: memory stays flat in the layer's size, and the disk
/// holds the layer twice while it is packed. Then the tree image lists the layers in order
/// (see [`Registry::push_tree`]).
pub async fn pack(opts: &crate::apply::ApplyOptions, registry: &Registry) -> Result<Packing> {
    crate::plan::validate(&opts.layers)?;
    if opts.revisions.len() != opts.layers.len() || opts.revisions.iter().any(String::is_empty) {
        return Err(Error::Revisions(format!(
            "pack needs a pin for each of the {} layers ({} given); pass the revisions `gamezone-init resolve` prints",
            opts.layers.len(),
            opts.revisions.iter().filter(|r| !r.is_empty()).count()
        )));
    }
    let trees = opts.root.join(crate::apply::TREES);
    fs::create_dir_all(&trees).map_err(|e| Error::destination(&trees, "create trees directory", e))?;
    let mut out = Vec::with_capacity(opts.layers.len());
    // The entries of each layer built here; the tree image needs them to state its digest.
    let mut built = Vec::with_capacity(opts.layers.len());
    for (i, layer) in opts.layers.iter().enumerate() {
        let pin = &opts.revisions[i];
        let ctx = Ctx::new(i, layer.describe());
        let key = layer_key(layer, pin);
        if let Some(p) = registry.find(&ctx, &key).await? {
            tracing::info!(layer = i, key = %key, digest = %p.digest, "already packed; nothing fetched");
            out.push(PackOutcome::new(i, p, false));
            built.push(None);
            continue;
        }
        let mut one = opts.one_layer(i);
        one.registry = None;
        let (staging, writer) = crate::apply::build_layers(&one, vec![None]).await?;
        let stats = writer.stats();
        let tar = tempfile::Builder::new()
            .prefix(".pack-")
            .suffix(".tar")
            .tempfile_in(&trees)
            .map_err(|e| Error::destination(&trees, "create the layer's tar", e))?;
        let (entries, root, tar_path) = (writer.entries(), staging.path().to_owned(), tar.path().to_owned());
        let (blob, entries) =
            tokio::task::spawn_blocking(move || write_tar(&root, &entries, &tar_path).map(|b| (b, entries)))
                .await
                .map_err(|e| Error::Plan(format!("tar task failed: {e}")))?
                .map_err(|e| ctx.io("write the layer's tar", e))?;
        drop(staging);
        let annotations = BTreeMap::from([
            (TREE_DIGEST_ANNOTATION.to_owned(), stats.digest.clone()),
            (SOURCE_ANNOTATION.to_owned(), layer.describe()),
            (PIN_ANNOTATION.to_owned(), pin.clone()),
        ]);
        let p = registry.push(&ctx, &key, tar.path(), blob, &entries, annotations).await?;
        tracing::info!(layer = i, key = %key, digest = %p.digest, bytes = p.size, files = stats.files, "packed");
        out.push(PackOutcome::new(i, p, true));
        built.push(Some(entries));
    }
    let tree = registry.push_tree(&trees, &out, built).await?;
    tracing::info!(image = %tree.image, tree_digest = %tree.tree_digest, "tree image in place");
    Ok(Packing { layers: out, tree, peak_memory_bytes: peak_memory() })
}

/// The tag of the tree image of layers packed under `keys`, in order: `t-` and 32 hex of
/// sha256 over the keys.
pub fn tree_key<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0]);
    }
    format!("t-{}", &hex::encode(h.finalize())[..32])
}

/// The image config containerd needs to mount uncompressed layers (each one's diff id is its
/// digest), for this machine's architecture as Go names it (a node pulls only its own).
fn image_config(diff_ids: &[&str]) -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("JSON serializes")
}

/// The entries of a packed layer's tar (blocking), as the tree it unpacks to would list them.
fn tar_entries(ctx: &Ctx, tar_path: &Path) -> Result<BTreeMap<String, crate::tree::Entry>> {
    use crate::tree::Entry;
    let corrupt = |e: io::Error| ctx.verification(format!("the packed layer is not a readable tar: {e}"));
    let file = fs::File::open(tar_path).map_err(|e| ctx.io(format!("open {}", tar_path.display()), e))?;
    let mut ar = tar::Archive::new(io::BufReader::with_capacity(256 * 1024, file));
    let mut out = BTreeMap::new();
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let raw = std::str::from_utf8(&raw).map_err(|_| ctx.hostile("a path in the packed layer is not UTF-8"))?;
        let path = paths::join(&paths::components(raw).map_err(|e| ctx.hostile(format!("packed layer entry {e}")))?);
        let e = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let exec = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
                let mut h = HashWriter { inner: io::sink(), hasher: Sha256::new(), n: 0 };
                io::copy(&mut entry, &mut h).map_err(corrupt)?;
                Entry::file(exec, h.n, h.hasher.finalize().into())
            }
            tar::EntryType::Directory => Entry::dir(),
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                Entry::symlink(&String::from_utf8_lossy(&link))
            }
            _ => continue,
        };
        out.insert(path, e);
    }
    Ok(out)
}

/// `sha256:` and the hex of `bytes`' sha256: an OCI digest.
fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The listing of a layer's entries ([`LISTING_MEDIA_TYPE`]).
fn listing(entries: &BTreeMap<String, crate::tree::Entry>) -> Vec<u8> {
    let rows: Vec<(&str, &str, u64, String)> =
        entries.iter().map(|(path, e)| (path.as_str(), e.mode(), e.size(), e.sha_hex())).collect();
    serde_json::to_vec(&rows).expect("JSON serializes")
}

/// The entries a listing states, or why it is not one.
fn read_listing(bytes: &[u8]) -> std::result::Result<BTreeMap<String, crate::tree::Entry>, String> {
    let rows: Vec<(String, String, u64, String)> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a layer listing ({e})"))?;
    let mut out = BTreeMap::new();
    for (path, mode, size, sha) in rows {
        let clean = paths::components(&path).map(|c| paths::join(&c)).map_err(|e| format!("entry {e}"))?;
        if clean != path {
            return Err(format!("entry {path:?} is not a clean relative path"));
        }
        let entry = crate::tree::Entry::from_parts(&mode, size, &sha)
            .ok_or_else(|| format!("entry {path:?} has mode {mode:?} and hash {sha:?}"))?;
        out.insert(path, entry);
    }
    Ok(out)
}

/// The tag of a layer packed at `pin`: `l-` and 32 hex of sha256 over the layer's JSON without
/// its `secretRef`s, and the pin.
pub fn layer_key(layer: &Layer, pin: &str) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("secretRef");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(layer).expect("a layer serializes");
    strip(&mut v);
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&v).expect("JSON serializes"));
    h.update([0]);
    h.update(pin.as_bytes());
    format!("l-{}", &hex::encode(h.finalize())[..32])
}

impl Registry {
    /// A client of `o.repository`. Refuses a repository that is not `host[:port]/path`.
    pub fn new(o: &RegistryOptions) -> Result<Self> {
        let repository = check_repository(&o.repository).map_err(|why| Error::Plan(format!("--registry {why}")))?;
        // The registry client's TLS (rustls) uses ring, as every other client here does; a
        // provider installed before (by this or the process) stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let protocol = if o.plain_http { ClientProtocol::Http } else { ClientProtocol::Https };
        let client = Client::new(ClientConfig { protocol, ..Default::default() });
        let auth = match &o.basic {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry { client: Arc::new(client), repository, auth, options: o.clone() })
    }

    /// Every tag of the repository with the manifest it names (none when it does not exist yet).
    pub async fn tagged(&self) -> Result<Vec<Tagged>> {
        let ctx = Ctx::new(0, format!("the repository {}", self.repository));
        let probe = self.reference("probe");
        let tags = match self.client.list_tags(&probe, &self.auth, None, None).await {
            Ok(t) => t.tags,
            Err(e) if is_unknown(&e) => return Ok(Vec::new()),
            Err(e) => return Err(self.failed(&ctx, "list the tags of", "*", e)),
        };
        let mut out = Vec::with_capacity(tags.len());
        for tag in tags {
            match self.client.pull_image_manifest(&self.reference(&tag), &self.auth).await {
                Ok((m, digest)) => {
                    out.push(Tagged { tag, digest, layers: m.layers.into_iter().map(|l| l.digest).collect() })
                }
                // Gone since the listing, or not an image manifest: not ours to judge.
                Err(e) if is_unknown(&e) => {}
                Err(OciDistributionError::UnsupportedMediaTypeError(_)) => {}
                Err(e) => return Err(self.failed(&ctx, "read the manifest of", &tag, e)),
            }
        }
        Ok(out)
    }

    /// Deletes the manifest `digest` (and with it every tag naming it). Its blobs stay until the
    /// registry's garbage collection finds no manifest referring to them.
    pub async fn delete_manifest(&self, digest: &str) -> Result<()> {
        let ctx = Ctx::new(0, format!("the repository {}", self.repository));
        let (host, path) = self.repository.split_once('/').expect("checked in Registry::new");
        let scheme = if self.options.plain_http { "http" } else { "https" };
        let url = format!("{scheme}://{host}/v2/{path}/manifests/{digest}");
        let http = reqwest::Client::new();
        let basic = self.options.basic.clone();
        let with_basic = |r: reqwest::RequestBuilder| match &basic {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        };
        let io = |e: reqwest::Error| ctx.transient(format!("cannot delete {digest} from {}: {e}", self.repository));
        let mut res = with_basic(http.delete(&url)).send().await.map_err(io)?;
        // A token registry (Harbor, the clouds'): a bearer token for the delete, then again.
        let challenge = res.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        if res.status() == reqwest::StatusCode::UNAUTHORIZED
            && let Some(token_url) = challenge.and_then(|c| bearer_token_url(c, path))
        {
            let body = with_basic(http.get(&token_url))
                .send()
                .await
                .map_err(io)?
                .error_for_status()
                .map_err(|e| {
                    ctx.auth(format!(
                        "the registry's token service refused a delete token ({e}); check the registry credentials"
                    ))
                })?
                .bytes()
                .await
                .map_err(io)?;
            let token: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let token = token["token"].as_str().or(token["access_token"].as_str()).unwrap_or_default().to_owned();
            res = http.delete(&url).bearer_auth(token).send().await.map_err(io)?;
        }
        match res.status().as_u16() {
            200..=299 | 404 => Ok(()),
            401 | 403 => Err(ctx.auth(format!(
                "the registry refused to delete {digest} from {} ({}); check that the registry credentials may delete",
                self.repository,
                res.status()
            ))),
            405 => Err(ctx.source(format!(
                "{} does not allow deletes (405); enable them (CNCF Distribution: storage.delete.enabled: true)",
                self.repository
            ))),
            s => Err(ctx.source(format!("cannot delete {digest} from {}: HTTP {s}", self.repository))),
        }
    }

    /// The repository, as given.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn reference(&self, tag: &str) -> Reference {
        format!("{}:{tag}", self.repository).parse().expect("checked in Registry::new")
    }

    /// The layer packed under `key`, if the registry holds it.
    pub(crate) async fn find(&self, ctx: &Ctx, key: &str) -> Result<Option<Packed>> {
        let image = self.reference(key);
        let (manifest, _) = match self.client.pull_image_manifest(&image, &self.auth).await {
            Ok(m) => m,
            Err(e) if is_unknown(&e) => return Ok(None),
            Err(e) => return Err(self.failed(ctx, "read the manifest of", key, e)),
        };
        let (layer, listing) = match manifest.layers.as_slice() {
            [layer] => (layer, None),
            [layer, listing] if listing.media_type == LISTING_MEDIA_TYPE => {
                (layer, Some((listing.digest.clone(), u64::try_from(listing.size).unwrap_or(0))))
            }
            other => {
                return Err(ctx.verification(format!(
                    "{}:{key} holds {} blobs, not the layer and its listing a packed layer has; delete the tag so it is packed again",
                    self.repository,
                    other.len()
                )));
            }
        };
        let tree_digest = manifest.annotations.as_ref().and_then(|a| a.get(TREE_DIGEST_ANNOTATION)).cloned();
        let Some(tree_digest) = tree_digest else {
            return Err(ctx.verification(format!(
                "{}:{key} has no {TREE_DIGEST_ANNOTATION} annotation: it was not pushed by gamezone-init pack; delete the tag so it is packed again",
                self.repository
            )));
        };
        Ok(Some(Packed {
            key: key.to_owned(),
            digest: layer.digest.clone(),
            size: u64::try_from(layer.size).unwrap_or(0),
            tree_digest,
            listing,
        }))
    }

    /// Pushes the tar at `tar` as the layer `key` (its blob only if the registry lacks it), with
    /// the listing of its `entries`.
    async fn push(
        &self,
        ctx: &Ctx,
        key: &str,
        tar: &Path,
        blob: (String, u64),
        entries: &BTreeMap<String, crate::tree::Entry>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Packed> {
        let image = self.reference(key);
        let (digest, size) = blob;
        self.client.store_auth_if_needed(image.resolve_registry(), &self.auth).await;
        let held = self
            .client
            .blob_exists(&image, &digest)
            .await
            .map_err(|e| self.failed(ctx, "look up a blob of", key, e))?;
        if !held {
            let stream = file_stream(tar).map_err(|e| ctx.io(format!("read {}", tar.display()), e))?;
            self.client
                .push_blob_stream(&image, stream, &digest, Some(size))
                .await
                .map_err(|e| self.failed(ctx, "push the layer of", key, e))?;
        }
        let (listing_digest, listing_size) = self.push_bytes(ctx, key, listing(entries), "push the listing of").await?;
        let tree_digest = annotations.get(TREE_DIGEST_ANNOTATION).cloned().unwrap_or_default();
        let blobs = [
            (digest.as_str(), size, IMAGE_LAYER_MEDIA_TYPE),
            (listing_digest.as_str(), listing_size, LISTING_MEDIA_TYPE),
        ];
        self.push_image(ctx, key, &blobs, annotations).await?;
        Ok(Packed { key: key.to_owned(), digest, size, tree_digest, listing: Some((listing_digest, listing_size)) })
    }

    /// Pushes `bytes` as a blob of the repository (`what` names it in an error); its digest and
    /// size.
    async fn push_bytes(&self, ctx: &Ctx, key: &str, bytes: Vec<u8>, what: &str) -> Result<(String, u64)> {
        let (digest, size) = (sha256_digest(&bytes), bytes.len() as u64);
        self.client
            .push_blob(&self.reference(key), bytes, &digest)
            .await
            .map_err(|e| self.failed(ctx, what, key, e))?;
        Ok((digest, size))
    }

    /// Pushes an image of blobs the repository holds already (digest, size, media type) under
    /// the tag `key`: its config (whose file system is the blobs that are tar layers) and its
    /// manifest. Returns the manifest's digest.
    async fn push_image(
        &self,
        ctx: &Ctx,
        key: &str,
        layers: &[(&str, u64, &str)],
        annotations: BTreeMap<String, String>,
    ) -> Result<String> {
        let image = self.reference(key);
        let tars: Vec<&str> = layers.iter().filter(|l| l.2 == IMAGE_LAYER_MEDIA_TYPE).map(|l| l.0).collect();
        let (config_digest, config_size) = self.push_bytes(ctx, key, image_config(&tars), "push the config of").await?;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
            config: OciDescriptor {
                media_type: IMAGE_CONFIG_MEDIA_TYPE.to_owned(),
                digest: config_digest,
                size: config_size as i64,
                ..Default::default()
            },
            layers: layers
                .iter()
                .map(|(digest, size, media_type)| OciDescriptor {
                    media_type: (*media_type).to_owned(),
                    digest: (*digest).to_owned(),
                    size: *size as i64,
                    ..Default::default()
                })
                .collect(),
            annotations: Some(annotations),
            ..Default::default()
        };
        let body = serde_json::to_vec(&OciManifest::Image(manifest)).expect("JSON serializes");
        let digest = sha256_digest(&body);
        self.client
            .push_manifest_raw(&image, body, OCI_IMAGE_MEDIA_TYPE.parse().expect("a valid header value"))
            .await
            .map_err(|e| self.failed(ctx, "push the manifest of", key, e))?;
        Ok(digest)
    }

    /// The tree image of `layers` (packed, in plan order): one manifest listing their blobs,
    /// tagged [`tree_key`] and annotated with the digest of the tree they make together. Kept
    /// when the repository has it; otherwise that digest is computed from the entries of the
    /// layers `built` here and of the others read from the registry (their listings; a layer
    /// packed without one is streamed to a file under `work` and read), and the manifest pushed
    /// (no layer bytes move).
    pub(crate) async fn push_tree(
        &self,
        work: &Path,
        layers: &[PackOutcome],
        mut built: Vec<Option<BTreeMap<String, crate::tree::Entry>>>,
    ) -> Result<TreeImage> {
        let key = tree_key(layers.iter().map(|l| l.key.as_str()));
        let ctx = Ctx::new(layers.len().saturating_sub(1), format!("the tree image {}:{key}", self.repository));
        let image = self.reference(&key);
        match self.client.pull_image_manifest(&image, &self.auth).await {
            Ok((manifest, digest)) => {
                let said = |key| manifest.annotations.as_ref().and_then(|a| a.get(key)).cloned();
                // A tree image packed before shapes were recorded keeps its pods' full check.
                if let Some(tree_digest) = said(TREE_DIGEST_ANNOTATION) {
                    return Ok(TreeImage {
                        image: format!("{}@{digest}", self.repository),
                        tree_digest,
                        tree_shape: said(TREE_SHAPE_ANNOTATION),
                        ..Default::default()
                    });
                }
            }
            Err(e) if is_unknown(&e) => {}
            Err(e) => return Err(self.failed(&ctx, "read the manifest of", &key, e)),
        }
        let mut tree = BTreeMap::new();
        for (l, entries) in layers.iter().zip(built.iter_mut()) {
            let entries = match (entries.take(), &l.listing) {
                (Some(e), _) => e,
                (None, Some((digest, size))) => self.read_listing(l, digest, *size).await?,
                (None, None) => {
                    let lctx = Ctx::new(l.layer, format!("packed layer {}", l.key));
                    let tmp = tempfile::Builder::new()
                        .prefix(".read-")
                        .suffix(".tar")
                        .tempfile_in(work)
                        .map_err(|e| Error::destination(work, "create a file for a packed layer", e))?;
                    let packed = Packed {
                        key: l.key.clone(),
                        digest: l.digest.clone(),
                        size: l.size,
                        tree_digest: String::new(),
                        listing: None,
                    };
                    self.download(&lctx, &packed, tmp.path()).await?;
                    let path = tmp.path().to_owned();
                    tokio::task::spawn_blocking(move || tar_entries(&lctx, &path))
                        .await
                        .map_err(|e| Error::Plan(format!("tar task failed: {e}")))??
                }
            };
            crate::tree::overlay(&mut tree, entries);
        }
        let tree_digest = crate::tree::digest_entries(&tree);
        let tree_shape = crate::tree::shape_entries(&tree);
        let blobs: Vec<(&str, u64, &str)> =
            layers.iter().map(|l| (l.digest.as_str(), l.size, IMAGE_LAYER_MEDIA_TYPE)).collect();
        let annotations = BTreeMap::from([
            (TREE_DIGEST_ANNOTATION.to_owned(), tree_digest.clone()),
            (TREE_SHAPE_ANNOTATION.to_owned(), tree_shape.clone()),
        ]);
        let digest = self.push_image(&ctx, &key, &blobs, annotations).await?;
        Ok(TreeImage {
            image: format!("{}@{digest}", self.repository),
            tree_digest,
            tree_shape: Some(tree_shape),
            ..Default::default()
        })
    }

    /// The entries the listing blob of the packed layer `l` states.
    async fn read_listing(
        &self,
        l: &PackOutcome,
        digest: &str,
        size: u64,
    ) -> Result<BTreeMap<String, crate::tree::Entry>> {
        let ctx = Ctx::new(l.layer, format!("packed layer {}", l.key));
        let desc = OciDescriptor {
            media_type: LISTING_MEDIA_TYPE.to_owned(),
            digest: digest.to_owned(),
            size: size as i64,
            ..Default::default()
        };
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
        self.client
            .pull_blob(&self.reference(&l.key), &desc, &mut bytes)
            .await
            .map_err(|e| self.failed(&ctx, "download the listing of", &l.key, e))?;
        read_listing(&bytes).map_err(|why| {
            ctx.verification(format!(
                "the listing of {}:{} is unreadable: {why}; delete the tag so it is packed again",
                self.repository, l.key
            ))
        })
    }

    /// Downloads the layer's blob to `to` (its digest checked as it streams).
    pub(crate) async fn download(&self, ctx: &Ctx, packed: &Packed, to: &Path) -> Result<()> {
        let image = self.reference(&packed.key);
        let desc = OciDescriptor {
            media_type: IMAGE_LAYER_MEDIA_TYPE.to_owned(),
            digest: packed.digest.clone(),
            size: packed.size as i64,
            ..Default::default()
        };
        let file = tokio::fs::File::create(to).await.map_err(|e| ctx.io(format!("create {}", to.display()), e))?;
        let mut out = tokio::io::BufWriter::new(file);
        self.client
            .pull_blob(&image, &desc, &mut out)
            .await
            .map_err(|e| self.failed(ctx, "download the layer of", &packed.key, e))?;
        tokio::io::AsyncWriteExt::flush(&mut out).await.map_err(|e| ctx.io(format!("write {}", to.display()), e))
    }

    /// A registry error as the layer's error: unreachable or 5xx are transient, refusals say so.
    fn failed(&self, ctx: &Ctx, what: &str, key: &str, e: OciDistributionError) -> Error {
        let at = format!("{}:{key}", self.repository);
        match &e {
            OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => ctx
                .auth(format!("the registry refused to {what} {at} ({}); check the registry credentials", bounded(&e))),
            OciDistributionError::RequestError(_) | OciDistributionError::ServerError { code: 500.., .. } => {
                ctx.transient(format!("cannot {what} {at}: {}", bounded(&e)))
            }
            OciDistributionError::DigestError(_) => {
                ctx.verification(format!("{at}: the registry sent other bytes than the digest names ({})", bounded(&e)))
            }
            _ => ctx.source(format!("cannot {what} {at}: {}", bounded(&e))),
        }
    }
}

/// The user and password a Docker config JSON (a `kubernetes.io/dockerconfigjson` Secret's
/// `.dockerconfigjson`) holds for `host`: `auth` (base64 of `user:password`) or `username` and
/// `password`. None when it names no such host.
pub fn basic_from_docker_config(text: &str, host: &str) -> std::result::Result<Option<(String, String)>, String> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not a Docker config JSON ({e}); expected {{\"auths\": {{\"{host}\": ...}}}}"))?;
    let Some(entry) = v["auths"].get(host).or_else(|| v["auths"].get(format!("https://{host}"))) else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(Some((u.to_owned(), p.to_owned())));
    }
    let auth =
        entry["auth"].as_str().ok_or_else(|| format!("auths.{host} has neither auth nor username and password"))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .map_err(|_| format!("auths.{host}.auth is not base64"))?;
    let raw = String::from_utf8(raw).map_err(|_| format!("auths.{host}.auth is not UTF-8"))?;
    let (u, p) = raw.split_once(':').ok_or_else(|| format!("auths.{host}.auth is not user:password"))?;
    Ok(Some((u.to_owned(), p.to_owned())))
}

/// The registry's own words, cut short: an error never carries a whole response body.
fn bounded(e: &OciDistributionError) -> String {
    let s = e.to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// `given` as a repository, `host[:port]/path`, or why it is not one (naming it).
pub fn check_repository(given: &str) -> std::result::Result<String, String> {
    let repository = given.trim_end_matches('/').to_owned();
    let parsed: std::result::Result<Reference, _> = format!("{repository}:probe").parse();
    match parsed {
        Err(e) => Err(format!("{given:?}: {e}")),
        Ok(r) if !repository.contains('/') || r.registry() != repository.split('/').next().unwrap_or_default() => {
            Err(format!("{given:?}: name the host and the repository: host[:port]/path"))
        }
        Ok(_) => Ok(repository),
    }
}

/// The token URL a `Bearer realm="…",service="…"` challenge names, asking for delete on `path`.
fn bearer_token_url(challenge: &str, path: &str) -> Option<String> {
    let params = challenge.strip_prefix("Bearer ")?;
    let value = |key: &str| {
        params
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let realm = value("realm")?;
    let mut url = reqwest::Url::parse(&realm).ok()?;
    if let Some(service) = value("service") {
        url.query_pairs_mut().append_pair("service", &service);
    }
    url.query_pairs_mut().append_pair("scope", &format!("repository:{path}:pull,delete"));
    Some(url.to_string())
}

/// Whether the registry says it has no such tag (or no such repository yet).
fn is_unknown(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(x.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound)
        }),
        OciDistributionError::ServerError { code: 404, .. } => true,
        _ => false,
    }
}

/// A file as a stream of 1 MiB chunks, for a push whose memory stays flat in the file's size.
fn file_stream(
    path: &Path,
) -> io::Result<impl futures::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>> + Send + 'static> {
    let file = fs::File::open(path)?;
    Ok(futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 1 << 20];
        match tokio::task::block_in_place(|| file.read(&mut buf)) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
        }
    }))
}

/// Writes the tree at `root` (whose entries `entries` lists) as an uncompressed tar at `out`, in
/// path order, owner 0, time 0; returns its digest and size.
pub(crate) fn write_tar(
    root: &Path,
    entries: &BTreeMap<String, crate::tree::Entry>,
    out: &Path,
) -> io::Result<(String, u64)> {
    let mut w = HashWriter { inner: BufWriter::new(fs::File::create(out)?), hasher: Sha256::new(), n: 0 };
    {
        let mut b = tar::Builder::new(&mut w);
        for (path, e) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match e.kind() {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())?;
                }
                Kind::File { exec } => {
                    let mut f = fs::File::open(root.join(path))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(if exec { 0o755 } else { 0o644 });
                    h.set_size(f.metadata()?.len());
                    b.append_data(&mut h, path, &mut f)?;
                }
                Kind::Symlink => {
                    let target = fs::read_link(root.join(path))?;
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        b.finish()?;
    }
    w.inner.flush()?;
    w.inner.get_ref().sync_all()?;
    Ok((format!("sha256:{}", hex::encode(w.hasher.finalize())), w.n))
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Unpacks a packed layer's tar into the tree (blocking): files, directories and symlinks
/// only, every path and link target checked as for any archive.
pub(crate) fn unpack(ctx: &Ctx, tar_path: &Path, w: &TreeWriter) -> Result<()> {
    let corrupt = |e: io::Error| ctx.verification(format!("the packed layer is not a readable tar: {e}"));
    let file = fs::File::open(tar_path).map_err(|e| ctx.io(format!("open {}", tar_path.display()), e))?;
    let mut ar = tar::Archive::new(io::BufReader::with_capacity(256 * 1024, file));
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let raw = std::str::from_utf8(&raw).map_err(|_| ctx.hostile("a path in the packed layer is not UTF-8"))?;
        let path = paths::join(&paths::components(raw).map_err(|e| ctx.hostile(format!("packed layer entry {e}")))?);
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let exec = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
                w.write_reader(ctx, &path, exec, &mut entry)?;
            }
            tar::EntryType::Directory => w.ensure_dir(ctx, &path)?,
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                let link = std::str::from_utf8(&link)
                    .map_err(|_| ctx.hostile(format!("symlink `{path}` target is not UTF-8")))?;
                paths::check_link_target(&path, link).map_err(|e| ctx.hostile(e))?;
                w.symlink(ctx, &path, link)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName => {}
            other => {
                return Err(ctx.hostile(format!(
                    "`{path}` in the packed layer is a {other:?} entry; a packed layer holds files, directories and symlinks only"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_s_key_follows_its_source_path_and_pin_not_its_secret() {
        let layer = |secret: &str, sub: Option<&str>| -> Layer {
            serde_json::from_value(serde_json::json!({
                "path": "/app", "subPath": sub,
                "git": {"url": "https://g/x.git", "branch": "main", "secretRef": {"name": secret}}
            }))
            .unwrap()
        };
        let k = layer_key(&layer("a", None), "c0ffee");
        assert!(k.starts_with("l-") && k.len() == 34, "{k}");
        assert_eq!(k, layer_key(&layer("b", None), "c0ffee"), "another zone's Secret name packs nothing again");
        assert_ne!(k, layer_key(&layer("a", None), "c0ffef"));
        assert_ne!(k, layer_key(&layer("a", Some("config")), "c0ffee"));
    }

    #[test]
    fn registry_credentials_come_from_a_docker_config() {
        let b64 = "dXNlcjpwYXNz"; // user:pass
        let text = format!(
            r#"{{"auths": {{"reg:5000": {{"auth": "{b64}"}}, "other": {{"username": "u", "password": "p"}}}}}}"#
        );
        assert_eq!(basic_from_docker_config(&text, "reg:5000").unwrap(), Some(("user".into(), "pass".into())));
        assert_eq!(basic_from_docker_config(&text, "other").unwrap(), Some(("u".into(), "p".into())));
        assert_eq!(basic_from_docker_config(&text, "none").unwrap(), None);
        assert!(basic_from_docker_config("{", "reg").unwrap_err().contains("not a Docker config JSON"));
        let bad = r#"{"auths": {"reg": {"auth": "!!"}}}"#;
        assert!(basic_from_docker_config(bad, "reg").unwrap_err().contains("not base64"));
    }

    #[test]
    fn a_repository_names_its_host_and_path() {
        let o = |r: &str| RegistryOptions { repository: r.into(), plain_http: true, basic: None };
        assert!(Registry::new(&o("127.0.0.1:5000/gamezone/layers")).is_ok());
        for bad in ["layers", "127.0.0.1:5000", "reg:5000/Upper"] {
            let e = Registry::new(&o(bad)).err().unwrap().to_string();
            assert!(e.contains("--registry"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_packed_tar_reads_back_as_the_same_tree_and_is_the_same_bytes_twice() {
        let src = tempfile::tempdir().unwrap();
        let (limits, progress) = (crate::Limits::default(), Arc::new(crate::progress::NoProgress));
        let w = TreeWriter::new(src.path().to_owned(), limits, progress.clone());
        let ctx = Ctx::new(0, "test");
        w.ensure_dir(&ctx, "config").unwrap();
        w.write_reader(&ctx, "config/a.json", false, &mut &b"{}"[..]).unwrap();
        w.write_reader(&ctx, "bin/run", true, &mut &b"#!/bin/sh"[..]).unwrap();
        w.symlink(&ctx, "latest", "config/a.json").unwrap();
        let out = tempfile::tempdir().unwrap();
        let (d1, n1) = write_tar(src.path(), &w.entries(), &out.path().join("1.tar")).unwrap();
        let (d2, _) = write_tar(src.path(), &w.entries(), &out.path().join("2.tar")).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(n1, fs::metadata(out.path().join("1.tar")).unwrap().len());
        let dst = tempfile::tempdir().unwrap();
        let back = TreeWriter::new(dst.path().to_owned(), limits, progress);
        unpack(&ctx, &out.path().join("1.tar"), &back).unwrap();
        assert_eq!(back.stats().digest, w.stats().digest);
        // The listing pushed beside the tar states the same entries the tar holds.
        let from_tar = tar_entries(&ctx, &out.path().join("1.tar")).unwrap();
        assert_eq!(read_listing(&listing(&w.entries())).unwrap(), from_tar);
        assert_eq!(crate::tree::digest_entries(&from_tar), w.stats().digest);
    }

    #[test]
    fn a_listing_that_is_not_one_is_refused() {
        let sha = "ab".repeat(32);
        for (bad, why) in [
            (serde_json::json!({"a": 1}), "not a layer listing"),
            (serde_json::json!([["../etc/passwd", "100644", 1, sha]]), "entry"),
            (serde_json::json!([["a//b", "100644", 1, sha]]), "entry"),
            (serde_json::json!([["a", "100600", 1, sha]]), "has mode"),
            (serde_json::json!([["a", "100644", 1, "xyz"]]), "has mode"),
        ] {
            let err = read_listing(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn hostile_entries_in_a_packed_layer_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(0, "test");
        for (name, build) in [
            (
                "escape",
                Box::new(|b: &mut tar::Builder<fs::File>| {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(1);
                    h.set_entry_type(tar::EntryType::Regular);
                    let name = b"../outside";
                    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).unwrap();
                }) as Box<dyn Fn(&mut tar::Builder<fs::File>)>,
            ),
            (
                "device",
                Box::new(|b: &mut tar::Builder<fs::File>| {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Char);
                    b.append_data(&mut h, "dev", io::empty()).unwrap();
                }),
            ),
            (
                "link out",
                Box::new(|b: &mut tar::Builder<fs::File>| {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, "l", "/etc/passwd").unwrap();
                }),
            ),
        ] {
            let path = dir.path().join(format!("{name}.tar"));
            let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
            build(&mut b);
            b.finish().unwrap();
            let dst = tempfile::tempdir().unwrap();
            let w =
                TreeWriter::new(dst.path().to_owned(), crate::Limits::default(), Arc::new(crate::progress::NoProgress));
            let e = unpack(&ctx, &path, &w).unwrap_err();
            assert!(matches!(e, Error::Hostile { .. }), "{name}: {e}");
            assert!(!dir.path().join("outside").exists());
        }
    }
}
