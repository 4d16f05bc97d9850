//! Hub loading against a local HTTP/1.1 server with the hub's URL layout
//! (`/{id}/resolve/{revision}/{file}`, safetensors redirected to a "CDN" path as the real
//! hub does for LFS files). The server listens on loopback only, answers one request per
//! connection, and stops when its test drops it (or after two minutes at most).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{block, gpu};
use webtune::error::{Error, HubErrorKind};
use webtune::load::hub::{fetch_model, Hub, HubFiles, HubRepo, Progress};
use webtune::load::{model_from_hf_dir, ModelSource};

const FIXTURE: &str = "tests/fixtures/llama";

// --- the server ------------------------------------------------------------------------

/// Serves `root/{id}/{revision}/{file}`. Markers in `root/{id}/`: `GATED` answers 403 with
/// `X-Error-Code: GatedRepo`, `FAIL500` answers 500, `TRUNCATE` promises 100 more bytes of
/// each safetensors body than it sends. An unknown repo answers 401 `RepoNotFound` (as the
/// hub does), an unknown revision 404 `RevisionNotFound`, a missing file 404
/// `EntryNotFound`.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (root, s, r) = (root.to_path_buf(), stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &root, addr, &r);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        Server { addr, stop, requests, thread: Some(thread) }
    }

    fn hub(&self) -> Hub {
        Hub::new(&format!("http://{}/", self.addr))
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn serve(mut stream: TcpStream, root: &Path, addr: SocketAddr, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > 16 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(path.clone());

    let respond = |stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], claim: usize| {
        let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {claim}\r\nConnection: close\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        stream.write_all(h.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    };
    let error = |stream: &mut TcpStream, status: &str, code: &str| {
        let msg = format!("{code} for {path}");
        respond(
            stream,
            status,
            &[("X-Error-Code", code.into()), ("X-Error-Message", msg.clone())],
            msg.as_bytes(),
            msg.len(),
        )
    };

    if let Some(rest) = path.strip_prefix("/cdn/") {
        let (id_rev, file) = rest.split_once("/-/").unwrap();
        let repo_dir = root.join(id_rev.split("/@/").next().unwrap());
        let f = root.join(id_rev.replace("/@/", "/")).join(file);
        let body = std::fs::read(f)?;
        let claim = body.len() + if repo_dir.join("TRUNCATE").exists() { 100 } else { 0 };
        return respond(&mut stream, "200 OK", &[], &body, claim);
    }
    let Some((id, rest)) = path[1..].split_once("/resolve/") else {
        return error(&mut stream, "404 Not Found", "EntryNotFound");
    };
    let (rev, file) = rest.split_once('/').unwrap_or((rest, ""));
    let rev = percent_decode(rev);
    let repo_dir = root.join(id);
    if !repo_dir.is_dir() {
        return error(&mut stream, "401 Unauthorized", "RepoNotFound");
    }
    if repo_dir.join("GATED").exists() {
        return error(&mut stream, "403 Forbidden", "GatedRepo");
    }
    if repo_dir.join("FAIL500").exists() {
        return respond(&mut stream, "500 Internal Server Error", &[], b"boom", 4);
    }
    let rev_dir = repo_dir.join(&rev);
    if !rev_dir.is_dir() {
        return error(&mut stream, "404 Not Found", "RevisionNotFound");
    }
    let f = rev_dir.join(file);
    if !f.is_file() {
        return error(&mut stream, "404 Not Found", "EntryNotFound");
    }
    if file.ends_with(".safetensors") {
        // Like the hub: LFS files redirect to a content server.
        let to = format!("http://{addr}/cdn/{id}/@/{rev}/-/{file}");
        return respond(&mut stream, "302 Found", &[("Location", to)], b"", 0);
    }
    let body = std::fs::read(f)?;
    respond(&mut stream, "200 OK", &[], &body, body.len())
}

// --- the repositories -----------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("webtune-hub-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURE).join(name)).unwrap()
}

/// A repo revision with the fixture's config, stand-in tokenizer files and, when `weights`,
/// its single-file weights.
fn base(dir: &Path, weights: bool) {
    put(dir, "config.json", &fixture("config.json"));
    put(dir, "tokenizer.json", br#"{"version":"1.0"}"#);
    put(dir, "tokenizer_config.json", br#"{"model_max_length":128}"#);
    if weights {
        put(dir, "model.safetensors", &fixture("model.safetensors"));
    }
}

/// The fixture's tensors split over two shards, with the index naming them.
fn shard(dir: &Path, shard_names: [&str; 2], write_second: bool) {
    let bytes = fixture("model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (k, shard) in shard_names.iter().enumerate() {
        let mine: Vec<_> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == k)
            .map(|(_, n)| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        for (n, _) in &mine {
            map.insert(n.clone(), serde_json::Value::String(shard.to_string()));
        }
        if k == 0 || write_second {
            put(dir, shard, &safetensors::serialize(mine, None).unwrap());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": bytes.len()}, "weight_map": map});
    put(dir, "model.safetensors.index.json", index.to_string().as_bytes());
}

const SHARDS: [&str; 2] = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

/// Every repository the tests use, under one root.
fn repos() -> TempDir {
    let t = TempDir::new("repos");
    let r = &t.0;
    base(&r.join("org/tiny/main"), true);
    base(&r.join("org/tiny-sharded/refs/pr/1"), false);
    put(&r.join("org/tiny-sharded/refs/pr/1"), "generation_config.json", br#"{"max_new_tokens":8}"#);
    shard(&r.join("org/tiny-sharded/refs/pr/1"), SHARDS, true);
    base(&r.join("legacy/main"), true);
    base(&r.join("org/no-tokenizer/main"), true);
    std::fs::remove_file(r.join("org/no-tokenizer/main/tokenizer.json")).unwrap();
    base(&r.join("org/no-weights/main"), false);
    base(&r.join("org/missing-shard/main"), false);
    shard(&r.join("org/missing-shard/main"), SHARDS, false);
    base(&r.join("org/evil-index/main"), false);
    shard(&r.join("org/evil-index/main"), ["model-00001-of-00002.safetensors", "../../../etc/passwd"], false);
    base(&r.join("org/gated/main"), true);
    put(&r.join("org/gated"), "GATED", b"");
    base(&r.join("org/truncated/main"), true);
    put(&r.join("org/truncated"), "TRUNCATE", b"");
    base(&r.join("org/broken/main"), true);
    put(&r.join("org/broken"), "FAIL500", b"");
    t
}

fn fetch(hub: &Hub, id: &str, rev: &str) -> Result<HubFiles, Error> {
    let repo = HubRepo::new(id, rev)?;
    block(fetch_model(hub, &repo, &mut |_| {}))
}

fn hub_err(r: Result<HubFiles, Error>) -> (HubErrorKind, String, String) {
    match r {
        Err(Error::Hub { kind, url, message }) => (kind, url, message),
        Err(e) => panic!("expected Error::Hub, got {e:?}"),
        Ok(_) => panic!("expected Error::Hub, got files"),
    }
}

// --- the tests ------------------------------------------------------------------------

const CHECKED: [&str; 5] = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.self_attn.k_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
];

/// The hub-loaded model's weights, read back from the GPU, equal the folder-loaded model's.
fn assert_same_weights(files: &HubFiles) {
    let g = gpu();
    let want = model_from_hf_dir(g, Path::new(FIXTURE)).unwrap();
    let got = files.model(g).unwrap();
    for name in CHECKED {
        let a = block(got.params.read(g, got.params.id(name).unwrap())).unwrap();
        let b = block(want.params.read(g, want.params.id(name).unwrap())).unwrap();
        assert_eq!(a, b, "{name}");
        assert!(a.iter().any(|&x| x != 0.0), "{name} is all zeros");
    }
}

#[test]
fn single_file_model_with_progress() {
    let root = repos();
    let server = Server::start(&root.0);
    let repo = HubRepo::parse("org/tiny").unwrap();
    assert_eq!(repo.revision, "main");
    let mut seen: Vec<(String, u64, Option<u64>)> = Vec::new();
    let files =
        block(fetch_model(&server.hub(), &repo, &mut |p: Progress| seen.push((p.file.to_string(), p.done, p.total))))
            .unwrap();
    assert_eq!(files.weights, ["model.safetensors"]);
    assert_eq!(files.get("model.safetensors").unwrap(), fixture("model.safetensors"));
    assert_eq!(files.get("config.json").unwrap(), fixture("config.json"));
    assert!(files.get("tokenizer.json").is_some() && files.get("tokenizer_config.json").is_some());
    assert!(files.get("generation_config.json").is_none(), "optional and absent (404)");
    // Progress: every fetched file starts at 0 and ends at its size, never going backwards.
    for (name, bytes) in &files.files {
        let mine: Vec<_> = seen.iter().filter(|s| &s.0 == name).collect();
        assert_eq!(mine.first().unwrap().1, 0, "{name}");
        let last = mine.last().unwrap();
        assert_eq!((last.1, last.2), (bytes.len() as u64, Some(bytes.len() as u64)), "{name}");
        assert!(mine.windows(2).all(|w| w[0].1 <= w[1].1), "{name}");
    }
    // The requests: the hub's layout, the optional file tried, the weights redirected.
    let reqs = server.requests();
    assert!(reqs.contains(&"/org/tiny/resolve/main/generation_config.json".to_string()), "{reqs:?}");
    assert!(reqs.contains(&"/cdn/org/tiny/@/main/-/model.safetensors".to_string()), "{reqs:?}");
    assert!(!reqs.iter().any(|r| r.contains("index.json")), "{reqs:?}");
    assert_same_weights(&files);
}

#[test]
fn sharded_model_at_a_pr_revision() {
    let root = repos();
    let server = Server::start(&root.0);
    let files = fetch(&server.hub(), "org/tiny-sharded", "refs/pr/1").unwrap();
    assert_eq!(files.weights, SHARDS);
    assert!(files.get("generation_config.json").is_some());
    assert!(files.get("model.safetensors.index.json").is_some());
    assert!(server.requests().contains(&"/org/tiny-sharded/resolve/refs%2Fpr%2F1/config.json".to_string()));
    assert_same_weights(&files);
}

#[test]
fn legacy_id_without_namespace() {
    let root = repos();
    let server = Server::start(&root.0);
    let files = fetch(&server.hub(), "legacy", "main").unwrap();
    assert_eq!(files.get("model.safetensors").unwrap(), fixture("model.safetensors"));
}

#[test]
fn missing_files_name_the_file_and_url() {
    let root = repos();
    let server = Server::start(&root.0);
    let hub = server.hub();

    let (kind, url, msg) = hub_err(fetch(&hub, "org/no-tokenizer", "main"));
    assert_eq!(kind, HubErrorKind::NotFound);
    assert_eq!(url, format!("http://{}/org/no-tokenizer/resolve/main/tokenizer.json", server.addr));
    assert!(msg.contains("tokenizer.json is missing from org/no-tokenizer") && msg.contains(&url), "{msg}");
    assert!(msg.contains("HTTP 404"), "{msg}");

    let (kind, _, msg) = hub_err(fetch(&hub, "org/no-weights", "main"));
    assert_eq!(kind, HubErrorKind::NotFound);
    assert!(msg.contains("neither model.safetensors nor model.safetensors.index.json"), "{msg}");

    let (kind, url, msg) = hub_err(fetch(&hub, "org/missing-shard", "main"));
    assert_eq!(kind, HubErrorKind::NotFound);
    assert!(url.ends_with("/org/missing-shard/resolve/main/model-00002-of-00002.safetensors"), "{url}");
    assert!(msg.contains("model-00002-of-00002.safetensors is missing"), "{msg}");

    let (kind, _, msg) = hub_err(fetch(&hub, "org/tiny", "v9"));
    assert_eq!(kind, HubErrorKind::NotFound);
    assert!(msg.contains("revision `v9` does not exist in org/tiny"), "{msg}");
}

#[test]
fn gated_and_private_repos_say_so() {
    let root = repos();
    let server = Server::start(&root.0);
    let (kind, url, msg) = hub_err(fetch(&server.hub(), "org/gated", "main"));
    assert_eq!(kind, HubErrorKind::Unauthorized);
    assert!(url.ends_with("/org/gated/resolve/main/config.json"), "{url}");
    assert!(msg.contains("org/gated is gated") && msg.contains("HTTP 403") && msg.contains("HF_TOKEN"), "{msg}");

    let (kind, _, msg) = hub_err(fetch(&server.hub(), "org/secret", "main"));
    assert_eq!(kind, HubErrorKind::Unauthorized);
    assert!(msg.contains("does not exist, or is private") && msg.contains("HTTP 401"), "{msg}");

    let mut hub = server.hub();
    hub.token = Some("hf_test".into());
    let (_, _, msg) = hub_err(fetch(&hub, "org/gated", "main"));
    assert!(msg.contains("a token was sent"), "{msg}");
}

#[test]
fn other_failures_are_typed() {
    let root = repos();
    let server = Server::start(&root.0);
    let (kind, url, msg) = hub_err(fetch(&server.hub(), "org/broken", "main"));
    assert_eq!(kind, HubErrorKind::Http(500));
    assert!(msg.contains("HTTP 500") && msg.contains(&url), "{msg}");

    let (kind, url, msg) = hub_err(fetch(&server.hub(), "org/truncated", "main"));
    assert_eq!(kind, HubErrorKind::Network);
    assert!(url.ends_with("model.safetensors"), "{url}");
    assert!(msg.contains(&url), "{msg}");

    // An index naming a shard outside the repo: refused before it is requested.
    match fetch(&server.hub(), "org/evil-index", "main") {
        Err(Error::Weights(m)) => assert!(m.contains("../../../etc/passwd"), "{m}"),
        other => panic!("expected Error::Weights, got {:?}", other.err()),
    }
    assert!(!server.requests().iter().any(|r| r.contains("passwd")));

    // Nothing listening: a network error naming the URL.
    let (kind, url, msg) = hub_err(fetch(&Hub::new("http://127.0.0.1:1"), "org/tiny", "main"));
    assert_eq!(kind, HubErrorKind::Network);
    assert_eq!(url, "http://127.0.0.1:1/org/tiny/resolve/main/config.json");
    assert!(msg.starts_with(&format!("could not fetch {url}")), "{msg}");
}

#[test]
fn bad_ids_are_refused_before_any_request() {
    let root = repos();
    let server = Server::start(&root.0);
    let bad = [
        "",
        "a/b/c",
        "/x",
        "x/",
        "org/ti ny",
        "org/-tiny",
        "org/tiny.",
        "org/ti--ny",
        "org/ti..ny",
        "org/tï",
        "org/t?x",
    ];
    for id in bad {
        let (kind, _, msg) = hub_err(block(fetch_model(
            &server.hub(),
            &HubRepo { id: id.into(), revision: "main".into() },
            &mut |_| {},
        )));
        assert_eq!(kind, HubErrorKind::InvalidId, "{id:?}");
        assert!(msg.contains("not a Hugging Face model id"), "{msg}");
    }
    for rev in ["", "a b", "../x", "x/../y", "/x", "a?b", "a#b"] {
        let (kind, _, msg) = hub_err(fetch(&server.hub(), "org/tiny", rev));
        assert_eq!(kind, HubErrorKind::InvalidId, "{rev:?}");
        assert!(msg.contains("is not a revision"), "{msg}");
    }
    assert!(HubRepo::new(&format!("org/{}", "x".repeat(97)), "main").is_err());
    assert!(HubRepo::new("HuggingFaceTB/SmolLM2-135M-Instruct", "main").is_ok());
    assert!(HubRepo::new("Qwen/Qwen2.5-0.5B", "v1.0").is_ok());
    assert_eq!(server.requests(), Vec::<String>::new());
}

#[test]
fn model_source_resolution() {
    let t = TempDir::new("source");
    let gguf = t.0.join("m.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let other = t.0.join("m.bin");
    std::fs::write(&other, b"x").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    assert_eq!(ModelSource::parse(FIXTURE).unwrap(), ModelSource::HfDir(FIXTURE.into()));
    assert_eq!(ModelSource::parse(&s(&gguf)).unwrap(), ModelSource::Gguf(gguf.clone()));
    assert_eq!(
        ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
        ModelSource::Hub(HubRepo::new("HuggingFaceTB/SmolLM2-135M-Instruct", "main").unwrap())
    );
    assert_eq!(
        ModelSource::parse("gpt2@refs/pr/1").unwrap(),
        ModelSource::Hub(HubRepo::new("gpt2", "refs/pr/1").unwrap())
    );
    for missing in ["./nope", "missing.gguf", "/no/such/dir", "a/b/c", "x.safetensors"] {
        match ModelSource::parse(missing) {
            Err(Error::Usage(m)) => assert!(m.contains("no such file or folder"), "{m}"),
            other => panic!("{missing}: {other:?}"),
        }
    }
    assert!(matches!(ModelSource::parse(&s(&other)), Err(Error::Usage(_))));
    assert!(matches!(ModelSource::parse("org/bad id"), Err(Error::Hub { kind: HubErrorKind::InvalidId, .. })));

    // The GGUF arm goes to the GGUF loader: a file that is not GGUF is its typed error.
    let src = ModelSource::parse(&s(&gguf)).unwrap();
    match block(src.load(gpu(), &Hub::default(), &mut |_| {})) {
        Err(Error::Weights(m)) => assert!(m.contains("GGUF"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a non-GGUF file loaded as GGUF"),
    }
    // The folder arm loads.
    assert!(block(ModelSource::parse(FIXTURE).unwrap().load(gpu(), &Hub::default(), &mut |_| {})).is_ok());
}
