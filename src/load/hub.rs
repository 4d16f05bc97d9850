//! Models from the Hugging Face hub (or any mirror with the same URL layout):
//! `{endpoint}/{model id}/resolve/{revision}/{file}`.
//!
//! [`fetch_model`] downloads what a fine-tuning run needs (`config.json`, the tokenizer
//! files, `generation_config.json` when there is one, and `model.safetensors` or the
//! shards listed by `model.safetensors.index.json`) into memory, reporting progress per
//! file; [`HubFiles::model`] hands the bytes to [`super::model_from_hf_bytes`]. The
//! requests go through `ureq` (blocking, rustls). The page fetches with the browser's
//! `fetch` in its worker (`www/worker.js`, same URL layout, with Cache Storage), so this
//! module's downloads are native only; ids and URLs are shared.

use std::collections::BTreeMap;

#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub use super::upload::model_from_hub;
use crate::error::{Error, HubErrorKind, Result};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REVISION: &str = "main";

/// Files a model cannot be trained without (besides its weights).
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "tokenizer_config.json"];
/// Files fetched when present; a 404 for them is not an error.
pub const OPTIONAL_FILES: [&str; 1] = ["generation_config.json"];
/// A single-file checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint, tried when [`WEIGHTS_FILE`] is not there.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Where to fetch from, and with which credentials.
#[derive(Clone, Debug)]
pub struct Hub {
    /// Base URL without a trailing slash, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// A Hugging Face access token, sent as `Authorization: Bearer ...` (gated or private
    /// repositories need one).
    pub token: Option<String>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(DEFAULT_ENDPOINT)
    }
}

impl Hub {
    pub fn new(endpoint: &str) -> Hub {
        Hub { endpoint: endpoint.trim_end_matches('/').to_string(), token: None }
    }

    /// `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN`, as the Python
    /// `huggingface_hub` reads them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env() -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
        let mut hub = Hub::new(endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT));
        hub.token = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty());
        hub
    }

    /// The URL of `file` in `repo`.
    pub fn url(&self, repo: &HubRepo, file: &str) -> String {
        format!("{}/{}/resolve/{}/{}", self.endpoint, repo.id, encode_revision(&repo.revision), file)
    }
}

/// A model id (`namespace/name`, or a bare legacy `name` such as `gpt2`) at a revision
/// (a branch, tag or commit; default `main`). Both are checked on construction, before any
/// request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRepo {
    pub id: String,
    pub revision: String,
}

impl HubRepo {
    pub fn new(id: &str, revision: &str) -> Result<HubRepo> {
        validate_model_id(id)?;
        validate_revision(revision)?;
        Ok(HubRepo { id: id.to_string(), revision: revision.to_string() })
    }

    /// `id` or `id@revision`.
    pub fn parse(spec: &str) -> Result<HubRepo> {
        match spec.split_once('@') {
            Some((id, rev)) => HubRepo::new(id, rev),
            None => HubRepo::new(spec, DEFAULT_REVISION),
        }
    }
}

fn invalid(message: String) -> Error {
    Error::Hub { kind: HubErrorKind::InvalidId, url: String::new(), message }
}

/// The hub's rules: one optional `namespace/`, then a name of at most 96 characters from
/// `[A-Za-z0-9_.-]`, each part starting and ending with a letter, digit or `_`, with no
/// `--` or `..`.
pub fn validate_model_id(id: &str) -> Result<()> {
    let why = |what: &str| {
        invalid(format!(
            "`{id}` is not a Hugging Face model id ({what}); expected `namespace/name`, e.g. HuggingFaceTB/SmolLM2-135M-Instruct"
        ))
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(why("more than one `/`"));
    }
    for p in &parts {
        if p.is_empty() {
            return Err(why("an empty part"));
        }
        if p.len() > 96 {
            return Err(why("a part longer than 96 characters"));
        }
        if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
            return Err(why(&format!("character {c:?}")));
        }
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if !p.starts_with(word) || !p.ends_with(word) {
            return Err(why("a part starts or ends with `-` or `.`"));
        }
        if p.contains("--") || p.contains("..") {
            return Err(why("`--` or `..`"));
        }
    }
    Ok(())
}

fn validate_revision(rev: &str) -> Result<()> {
    let bad = rev.is_empty()
        || rev.len() > 256
        || rev.starts_with('/')
        || rev.ends_with('/')
        || rev.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '%' | '\\'))
        || rev.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(invalid(format!("`{rev}` is not a revision (a branch, tag or commit, e.g. main)")));
    }
    Ok(())
}

/// Revisions like `refs/pr/1` go into the URL as one path segment.
fn encode_revision(rev: &str) -> String {
    let mut out = String::with_capacity(rev.len());
    for b in rev.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A shard name from an index: relative, `[A-Za-z0-9_.-]` segments, no `.` or `..`.
#[cfg(not(target_arch = "wasm32"))]
fn validate_shard_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Weights(format!(
            "{WEIGHTS_INDEX_FILE} names the shard `{name}`, which is not a plain relative file name"
        )))
    }
}

/// Download progress of one file. `total` is the `Content-Length`, when the server sent one.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub file: &'a str,
    pub done: u64,
    pub total: Option<u64>,
}

/// The fetched files of one model, by file name.
#[derive(Clone, Debug)]
pub struct HubFiles {
    pub repo: HubRepo,
    pub files: BTreeMap<String, Vec<u8>>,
    /// The safetensors files among `files`, in load order.
    pub weights: Vec<String>,
}

impl HubFiles {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|v| v.as_slice())
    }

    pub fn config_json(&self) -> Result<&str> {
        let bytes =
            self.get("config.json").ok_or_else(|| Error::Config(format!("{}: no config.json", self.repo.id)))?;
        std::str::from_utf8(bytes).map_err(|_| Error::Config(format!("{}/config.json is not UTF-8", self.repo.id)))
    }

    /// `(name, bytes)` of every weights file, as `model_from_hf_bytes` takes them.
    pub fn shards(&self) -> Vec<(&str, &[u8])> {
        self.weights.iter().filter_map(|n| self.files.get(n).map(|b| (n.as_str(), b.as_slice()))).collect()
    }
}

/// Fetch `repo` from `hub` into memory: [`REQUIRED_FILES`], [`OPTIONAL_FILES`] that exist,
/// and the weights (`model.safetensors`, or the index and every shard it names).
/// `progress` is called as each file's bytes arrive.
#[cfg(not(target_arch = "wasm32"))]
pub async fn fetch_model(hub: &Hub, repo: &HubRepo, progress: &mut dyn FnMut(Progress)) -> Result<HubFiles> {
    validate_model_id(&repo.id)?;
    validate_revision(&repo.revision)?;
    let client = transport::Client::new(hub.token.clone())?;
    let mut files = BTreeMap::new();
    for f in REQUIRED_FILES {
        let bytes = fetch_file(&client, hub, repo, f, true, progress).await?.expect("required");
        files.insert(f.to_string(), bytes);
    }
    for f in OPTIONAL_FILES {
        if let Some(bytes) = fetch_file(&client, hub, repo, f, false, progress).await? {
            files.insert(f.to_string(), bytes);
        }
    }
    let mut weights = Vec::new();
    if let Some(bytes) = fetch_file(&client, hub, repo, WEIGHTS_FILE, false, progress).await? {
        files.insert(WEIGHTS_FILE.to_string(), bytes);
        weights.push(WEIGHTS_FILE.to_string());
    } else {
        let Some(index) = fetch_file(&client, hub, repo, WEIGHTS_INDEX_FILE, false, progress).await? else {
            return Err(Error::Hub {
                kind: HubErrorKind::NotFound,
                url: hub.url(repo, WEIGHTS_INDEX_FILE),
                message: format!(
                    "{} at revision {} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} (HTTP 404 for {} and {}); only safetensors checkpoints can be fetched",
                    repo.id,
                    repo.revision,
                    hub.url(repo, WEIGHTS_FILE),
                    hub.url(repo, WEIGHTS_INDEX_FILE)
                ),
            });
        };
        let names = super::shard_names(WEIGHTS_INDEX_FILE, &index)?;
        files.insert(WEIGHTS_INDEX_FILE.to_string(), index);
        for n in &names {
            validate_shard_name(n)?;
        }
        for n in names {
            let bytes = fetch_file(&client, hub, repo, &n, true, progress).await?.expect("required");
            files.insert(n.clone(), bytes);
            weights.push(n);
        }
    }
    Ok(HubFiles { repo: repo.clone(), files, weights })
}

/// One file: its bytes, `None` for a 404 on an optional file, or a typed error.
#[cfg(not(target_arch = "wasm32"))]
async fn fetch_file(
    client: &transport::Client,
    hub: &Hub,
    repo: &HubRepo,
    file: &str,
    required: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<Vec<u8>>> {
    let url = hub.url(repo, file);
    let reply = client.get(&url, &mut |done, total| progress(Progress { file, done, total })).await?;
    let (status, code, hub_message) = match reply {
        transport::Reply::Body(bytes) => return Ok(Some(bytes)),
        transport::Reply::Status { status, error_code, error_message } => (status, error_code, error_message),
    };
    let said = hub_message.map(|m| format!(" (the hub says: {m})")).unwrap_or_default();
    let (id, rev) = (&repo.id, &repo.revision);
    Err(match status {
        404 if code.as_deref() == Some("RevisionNotFound") => Error::Hub {
            kind: HubErrorKind::NotFound,
            message: format!("revision `{rev}` does not exist in {id}: HTTP 404 for {url}{said}"),
            url,
        },
        404 if code.as_deref() == Some("RepoNotFound") => Error::Hub {
            kind: HubErrorKind::NotFound,
            message: format!("repository {id} does not exist: HTTP 404 for {url}{said}"),
            url,
        },
        404 if !required => return Ok(None),
        404 => Error::Hub {
            kind: HubErrorKind::NotFound,
            message: format!("{file} is missing from {id} at revision {rev}: HTTP 404 for {url}{said}"),
            url,
        },
        401 | 403 => {
            let what = match code.as_deref() {
                Some("GatedRepo") => "is gated: accept its conditions on the model page, then use an access token",
                Some("RepoNotFound") => "does not exist, or is private: check the id, or use a token that can read it",
                _ => "is gated or private (or does not exist): accept its conditions on the model page and use an access token that can read it",
            };
            let token = if hub.token.is_some() {
                " (a token was sent)"
            } else {
                " (no token was sent; natively, set HF_TOKEN)"
            };
            Error::Hub {
                kind: HubErrorKind::Unauthorized,
                message: format!("{id} {what}{token}: HTTP {status} for {url}{said}"),
                url,
            }
        }
        s => Error::Hub { kind: HubErrorKind::Http(s), message: format!("HTTP {s} for {url}{said}"), url },
    })
}

#[cfg(not(target_arch = "wasm32"))]
fn network(url: &str, detail: impl std::fmt::Display) -> Error {
    Error::Hub {
        kind: HubErrorKind::Network,
        url: url.to_string(),
        message: format!("could not fetch {url}: {detail}"),
    }
}

/// Never reserve more than this up front from a `Content-Length` (the server's word is not
/// checked until the bytes arrive).
#[cfg(not(target_arch = "wasm32"))]
const MAX_RESERVE: u64 = 64 << 20;

#[cfg(not(target_arch = "wasm32"))]
mod transport {
    use std::io::Read;
    use std::time::Duration;

    use super::{network, MAX_RESERVE};
    use crate::error::Result;

    pub(super) enum Reply {
        Body(Vec<u8>),
        Status { status: u16, error_code: Option<String>, error_message: Option<String> },
    }

    pub(super) struct Client {
        agent: ureq::Agent,
        token: Option<String>,
    }

    impl Client {
        pub(super) fn new(token: Option<String>) -> Result<Client> {
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .user_agent(concat!("webtune/", env!("CARGO_PKG_VERSION")))
                .build()
                .into();
            Ok(Client { agent, token })
        }

        pub(super) async fn get(&self, url: &str, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<Reply> {
            let mut req = self.agent.get(url);
            if let Some(t) = &self.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let resp = req.call().map_err(|e| network(url, e))?;
            let status = resp.status().as_u16();
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            if !(200..300).contains(&status) {
                return Ok(Reply::Status {
                    status,
                    error_code: header("x-error-code"),
                    error_message: header("x-error-message"),
                });
            }
            let total = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
            let mut body = resp.into_body();
            let mut reader = body.with_config().limit(u64::MAX).reader();
            let mut out = Vec::with_capacity(total.unwrap_or(0).min(MAX_RESERVE) as usize);
            let mut buf = vec![0u8; 256 << 10];
            progress(0, total);
            loop {
                let n = reader.read(&mut buf).map_err(|e| network(url, e))?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                progress(out.len() as u64, total);
            }
            if let Some(t) = total {
                if out.len() as u64 != t {
                    return Err(network(url, format!("the body ended after {} of {t} bytes", out.len())));
                }
            }
            Ok(Reply::Body(out))
        }
    }
}
