// webtune worker: owns the wasm module, the GPU device, the model's bytes and the training
// loop, so the page never freezes. A module worker; every message in and out is a plain
// object with `type`.
//
// page -> worker                              worker -> page
//   init                                        ready {adapter, caps, checkpoint} | no-webgpu
//   load-model {source, lora}                   progress {text, progress} ; model {info, plan}
//   reload-model {lora}  (LoRA is set at load)  error {where, message}
//   set-data {train, eval}                      data {info, preview, plan} | data-error
//   preview {index}                             preview {preview}
//   configure {settings}                        plan {plan, info, data}
//   train {run} / pause / resume / stop         state ; step ; samples ; exact ; checkpoint ; done
//   evaluate {limit}                            exact {phase: 'now', ...}
//   chat {messages, opts} / chat-stop           chat-token {text} ; chat-done {...}
//   export {format}                             download {name, bytes, mime}
//   restore {bytes, name} / resume-checkpoint   restored {plan, step}
//   lose-device                                 (a test hook: the next step recovers)
//
// Engine calls are serialized through `engine()`: the Session is borrowed for the whole of an
// async call, so two calls must never overlap (wasm-bindgen would throw "recursive use").
// The training loop takes the lock once per step, so a chat or a download while paused (or
// between steps) waits for the step in flight and never races it.

import init, { Session, capabilities, default_settings } from './pkg/webtune.js';
import { zipStore } from './zip.js';

let session = null;
// Steps done so far (a u64 in the engine: a BigInt in JS, which postMessage and === 0 mishandle).
const stepCount = () => Number(session.step_count());
let caps = null;
// What the session was built from, kept so that LoRA changes and a lost device can rebuild
// it without asking the page (or the network) again.
const current = {
  model: null, // {name, files: {name: Uint8Array}, key}
  lora: null, // {rank, alpha, dropout, rslora, targets} | null (full fine-tuning)
  data: null, // {name, text}
  eval: null, // {name, text} | null
  settings: null, // the engine's configure() keys
};
let training = false;
let paused = false;
let stopRequested = false;
let wake = null; // resolves a paused loop
let chatStop = false;
let loseDevice = false;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const errorText = (e) => (e && e.message) || String(e);
// A Rust panic surfaces as a WebAssembly RuntimeError ("unreachable"): the module is then
// in an unknown state. Say so instead of a cryptic trap.
const describe = (e) =>
  e instanceof WebAssembly.RuntimeError
    ? `the engine crashed (${e.message}); details are in the browser console. Reload the page to start again.`
    : errorText(e);

function fail(where, e) {
  post({ type: 'error', where, message: describe(e) });
}

let lock = Promise.resolve();
function engine(fn) {
  const run = lock.then(fn);
  lock = run.catch(() => {});
  return run;
}

// ---- GPU check (before the wasm module asks for a device) ----------------------------------
async function checkWebGPU() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    return { reason: 'no-api', detail: 'navigator.gpu is not defined in this browser (WebGPU is off or unsupported).' };
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (e) {
    return { reason: 'no-adapter', detail: `requestAdapter() failed: ${errorText(e)}` };
  }
  if (!adapter) {
    return { reason: 'no-adapter', detail: 'WebGPU is present but the browser offered no GPU adapter (blocklisted driver, or GPU disabled).' };
  }
  const i = adapter.info || {};
  return { ok: { vendor: i.vendor || '', architecture: i.architecture || '', description: i.description || '' } };
}

async function handleInit() {
  const check = await checkWebGPU();
  if (!check.ok) {
    post({ type: 'no-webgpu', ...check });
    return;
  }
  await init({ module_or_path: new URL('./pkg/webtune_bg.wasm', import.meta.url) });
  caps = capabilities();
  session = await Session.create();
  post({ type: 'ready', adapter: session.adapter_info(), webgpu: check.ok, caps, defaults: default_settings(), checkpoint: await checkpointMeta() });
}

// ---- Downloads with progress and a cache ------------------------------------------------------
const CACHE = 'webtune-models-v1';

async function openCache() {
  try {
    return self.caches ? await self.caches.open(CACHE) : null;
  } catch {
    return null; // no Cache Storage (an insecure origin): download every time
  }
}

// Read a response body with byte progress. `onBytes(got, total)` is throttled by the caller.
async function readBody(res, label, onBytes) {
  const total = Number(res.headers.get('content-length')) || 0;
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const chunks = [];
  let got = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    onBytes(got, total);
  }
  if (total && got !== total) throw new Error(`${label}: the download stopped at ${got} of ${total} bytes`);
  const out = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

function progressPoster(prefix) {
  let last = 0;
  return (got, total, force) => {
    const now = Date.now();
    if (!force && now - last < 120) return;
    last = now;
    const mb = (n) => (n / 1e6).toFixed(1);
    post({ type: 'progress', text: total ? `${prefix}: ${mb(got)} / ${mb(total)} MB` : `${prefix}: ${mb(got)} MB`, progress: total ? got / total : null });
  };
}

// GET `url`; `optional` files that are missing give null. A cache hit costs no request.
async function fetchFile(url, label, { optional = false, cache = null, progress = null } = {}) {
  if (cache) {
    const hit = await cache.match(url);
    if (hit) return new Uint8Array(await hit.arrayBuffer());
  }
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new Error(`${label}: could not reach ${url} (${errorText(e)}; offline, or the server does not allow this page's origin)`);
  }
  if (res.status === 404 && optional) return null;
  if (res.status === 401 || res.status === 403) throw new Error(`${label}: HTTP ${res.status}: the model is gated or private (this page sends no token); download it and choose its files instead`);
  if (!res.ok) throw new Error(`${label}: HTTP ${res.status} ${res.statusText} for ${url}`);
  const bytes = await readBody(res, label, progress || (() => {}));
  if (cache) await cache.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } })).catch(() => {});
  return bytes;
}

// ---- Models -------------------------------------------------------------------------------------
// Fetch a Hugging Face model folder by id: config, tokenizer, weights (one file or the
// shards of an index). Each file is cached under its resolve URL, and a manifest of which
// files exist is cached too, so a reload makes no request at all (optional files included).
async function fetchHub({ id, endpoint, revision }) {
  id = (id || '').trim();
  if (!/^[\w.-]+\/[\w.-]+$/.test(id)) throw new Error(`"${id}" is not a Hugging Face model id (owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct)`);
  const base = `${(endpoint || 'https://huggingface.co').replace(/\/+$/, '')}/${id}/resolve/${encodeURIComponent(revision || 'main')}`;
  const cache = await openCache();
  const manifestUrl = `${base}/.webtune-manifest.json`;
  const cachedManifest = cache && (await cache.match(manifestUrl));
  const files = {};
  if (cachedManifest) {
    const names = await cachedManifest.json();
    for (const n of names) files[n] = await fetchFile(`${base}/${n}`, `${id}/${n}`, { cache });
    post({ type: 'progress', text: `${id}: read from the browser cache`, progress: 1 });
    return files;
  }
  const get = (n, optional) => fetchFile(`${base}/${n}`, `${id}/${n}`, { optional, cache, progress: progressPoster(`Downloading ${id}/${n}`) });
  files['config.json'] = await get('config.json', false);
  for (const n of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'chat_template.jinja', 'special_tokens_map.json']) {
    const b = await get(n, true);
    if (b) files[n] = b;
  }
  const index = await get('model.safetensors.index.json', true);
  let weights = ['model.safetensors'];
  if (index) {
    files['model.safetensors.index.json'] = index;
    const map = JSON.parse(new TextDecoder().decode(index)).weight_map || {};
    weights = [...new Set(Object.values(map))];
  }
  for (const [i, n] of weights.entries()) {
    const label = weights.length > 1 ? `${n} (${i + 1} of ${weights.length})` : n;
    files[n] = await fetchFile(`${base}/${n}`, `${id}/${n}`, { cache, progress: progressPoster(`Downloading ${id}/${label}`) });
  }
  if (cache) await cache.put(manifestUrl, new Response(JSON.stringify(Object.keys(files)))).catch(() => {});
  return files;
}

// source: {kind: 'url', name, url} | {kind: 'url-hf', name, base, files: [names]}
//       | {kind: 'files', name, files: {name: ArrayBuffer}} | {kind: 'hub', id, endpoint, revision}
async function sourceFiles(source) {
  if (source.kind === 'url') {
    const url = new URL(source.url, self.location.href).href;
    return { name: source.name, key: url, files: { [source.name]: await fetchFile(url, source.name, { progress: progressPoster(`Reading ${source.name}`) }) } };
  }
  if (source.kind === 'url-hf') {
    const files = {};
    for (const f of source.files) files[f] = await fetchFile(new URL(f, new URL(source.base, self.location.href)).href, f);
    return { name: source.name, key: source.base, files };
  }
  if (source.kind === 'files') {
    const files = {};
    for (const [n, b] of Object.entries(source.files)) files[n] = new Uint8Array(b);
    return { name: source.name, key: `local:${source.name}`, files };
  }
  if (source.kind === 'hub') {
    const files = await fetchHub(source);
    return { name: source.id.trim(), key: `hub:${source.endpoint}/${source.id}@${source.revision || 'main'}`, files };
  }
  throw new Error(`unknown model source ${source.kind}`);
}

// (Re)build the session's model from the kept bytes, then the data and settings on top
// (load_model clears the data: it is tokenized with the model's tokenizer).
function buildModel() {
  const m = current.model;
  const info = session.load_model(m.name, m.files, current.lora);
  let dataInfo = null;
  if (current.data) {
    try {
      dataInfo = session.set_data(current.data.name, current.data.text);
      session.set_eval(current.eval ? current.eval.name : '', current.eval ? current.eval.text : '');
    } catch (e) {
      // The data does not suit this model (e.g. token ids beyond its vocabulary).
      current.data = null;
      dataError(e, { name: '', text: '' });
    }
  }
  if (current.settings) {
    try { session.configure(current.settings); } catch (e) { fail('settings', e); }
  }
  return { info, dataInfo };
}

async function handleLoadModel({ source, lora }) {
  const t0 = performance.now();
  const m = await sourceFiles(source);
  post({ type: 'progress', text: `Loading ${m.name} onto the GPU…`, progress: null });
  current.model = m;
  current.lora = lora || null;
  const { info, dataInfo } = buildModel();
  post({ type: 'model', info, ms: performance.now() - t0, plan: session.plan(), data: dataInfo, dataName: current.data && current.data.name });
  if (dataInfo) post({ type: 'data', info: dataInfo, preview: session.preview(0), plan: session.plan() });
}

async function handleReloadModel({ lora }) {
  if (!current.model) return;
  const t0 = performance.now();
  post({ type: 'progress', text: `Reloading ${current.model.name} (${lora ? `LoRA rank ${lora.rank}` : 'full fine-tuning'})…`, progress: null });
  current.lora = lora || null;
  const { info, dataInfo } = buildModel();
  post({ type: 'model', info, ms: performance.now() - t0, plan: session.plan(), reloaded: true });
  if (dataInfo) post({ type: 'data', info: dataInfo, preview: session.preview(0), plan: session.plan() });
}

// ---- Data -----------------------------------------------------------------------------------------
async function textOf(d) {
  if (!d) return null;
  if (d.text != null) return { name: d.name, text: d.text };
  const res = await fetch(d.url);
  if (!res.ok) throw new Error(`${d.name}: HTTP ${res.status} for ${d.url}`);
  return { name: d.name, text: await res.text() };
}

function dataError(e, file) {
  const message = describe(e);
  // The engine says "data: name:line: what".
  const m = message.match(/:(\d+): /);
  const line = m ? Number(m[1]) : null;
  const lineText = line && file.text ? (file.text.split('\n')[line - 1] || '').slice(0, 240) : null;
  post({ type: 'data-error', name: file.name, message, line, lineText });
}

async function handleSetData(msg) {
  const train = await textOf(msg.train);
  const evalFile = await textOf(msg.eval);
  let file = train;
  try {
    const info0 = session.set_data(train.name, train.text);
    file = evalFile;
    const info = evalFile ? session.set_eval(evalFile.name, evalFile.text) : session.set_eval('', '');
    current.data = train;
    current.eval = evalFile;
    post({ type: 'data', info: info || info0, preview: session.preview(0), plan: session.plan() });
  } catch (e) {
    // Keep the session's data as it was before this file (set_data replaced it only if the
    // training file read; restore the previous one so the two never disagree).
    if (current.data && file === evalFile) {
      try { session.set_data(current.data.name, current.data.text); session.set_eval(current.eval ? current.eval.name : '', current.eval ? current.eval.text : ''); } catch { /* keep the error below */ }
    }
    dataError(e, file || { name: msg.train && msg.train.name, text: '' });
  }
}

// ---- Checkpoints (OPFS) -----------------------------------------------------------------------------
// The last automatic checkpoint lives in the origin-private file system: bytes in
// `checkpoint.bin`, what it belongs to in `checkpoint.json`. A lost device resumes from it;
// after a reload the page offers it.
let lastCheckpoint = null; // {meta, bytes}: the same, in memory

async function opfs() {
  try { return await navigator.storage.getDirectory(); } catch { return null; }
}

async function writeCheckpoint(bytes, meta) {
  lastCheckpoint = { meta, bytes };
  const dir = await opfs();
  if (!dir) return false;
  try {
    for (const [name, body] of [['checkpoint.bin', bytes], ['checkpoint.json', JSON.stringify(meta)]]) {
      const h = await dir.getFileHandle(name, { create: true });
      const w = await h.createWritable();
      await w.write(body);
      await w.close();
    }
    return true;
  } catch {
    return false; // no room: the in-memory copy still covers a device loss
  }
}

async function checkpointMeta() {
  const dir = await opfs();
  if (!dir) return null;
  try {
    const f = await (await dir.getFileHandle('checkpoint.json')).getFile();
    return JSON.parse(await f.text());
  } catch {
    return null;
  }
}

async function readCheckpoint() {
  if (lastCheckpoint) return lastCheckpoint;
  const dir = await opfs();
  const meta = await checkpointMeta();
  if (!dir || !meta) return null;
  const f = await (await dir.getFileHandle('checkpoint.bin')).getFile();
  return { meta, bytes: new Uint8Array(await f.arrayBuffer()) };
}

async function checkpoint(step) {
  const t0 = performance.now();
  const bytes = await engine(() => session.save_state());
  const meta = { step, model: current.model.name, data: current.data && current.data.name, eval: current.eval && current.eval.name, lora: current.lora, settings: current.settings, at: Date.now() };
  const stored = await writeCheckpoint(bytes, meta);
  post({ type: 'checkpoint', step, bytes: bytes.length, stored, ms: performance.now() - t0 });
}

// After a device loss: a fresh device and session, the same model, data and settings, and
// the run from the last checkpoint (or from the start when there was none yet).
async function recoverDevice(reason) {
  post({ type: 'recovering', reason });
  session = await Session.create();
  buildModel();
  const ck = lastCheckpoint;
  let step = 0;
  if (ck) {
    session.restore_state(ck.bytes);
    step = stepCount();
  }
  post({ type: 'recovered', step, plan: session.plan(), adapter: session.adapter_info() });
  return step;
}

// ---- Training loop -------------------------------------------------------------------------------
// run: {samples: [{label, input, chat}], sampleTokens, sampleEvery, evalItems, checkpointEvery}
async function samples(run, step) {
  if (!run.samples || !run.samples.length) return;
  const items = [];
  for (const s of run.samples) {
    const g = await engine(() => session.generate(s.input, { max_new_tokens: run.sampleTokens || 24, chat: !!s.chat }, () => true));
    items.push({ label: s.label, text: g.text });
  }
  post({ type: 'samples', step, items });
}

async function exactMatch(run, phase) {
  if (!run.evalItems || !current.eval) return;
  const r = await engine(() => session.evaluate(run.evalItems));
  post({ type: 'exact', phase, ...r });
}

// The base model's validation loss, the chart's point at step 0 (the run validates at its
// own intervals after that). Skipped when there is nothing held out.
async function validation(step) {
  if (!session.data_info().val) return;
  const v = await engine(() => session.validate());
  post({ type: 'valid', step, loss: v.loss });
}

async function waitWhilePaused() {
  post({ type: 'state', state: 'paused' });
  await new Promise((r) => (wake = r));
  wake = null;
  if (!stopRequested) post({ type: 'state', state: 'training' });
}

// One step; a lost device rebuilds the session from the last checkpoint and the loop goes on.
async function stepOnce() {
  if (loseDevice) {
    loseDevice = false;
    await engine(() => session.simulate_device_loss());
  }
  try {
    return await engine(() => session.step());
  } catch (e) {
    if (!(await engine(() => session.device_lost()))) throw e;
    await recoverDevice(describe(e));
    return undefined; // no step this time: the loop asks again
  }
}

async function trainLoop(run) {
  training = true;
  stopRequested = false;
  paused = false;
  post({ type: 'state', state: 'training' });
  let reason = 'finished';
  try {
    if ((await engine(() => stepCount())) === 0) {
      await exactMatch(run, 'before');
      await samples(run, 0);
      await validation(0);
      if (run.checkpointEvery) await checkpoint(0);
    }
    for (;;) {
      if (paused) await waitWhilePaused();
      if (stopRequested) { reason = 'stopped'; break; }
      const r = await stepOnce();
      if (r === undefined) continue;
      if (r === null) break;
      post({ type: 'step', ...r });
      const last = r.step >= r.total_steps;
      if (run.checkpointEvery && r.step % run.checkpointEvery === 0 && !last) await checkpoint(r.step);
      if (run.sampleEvery && r.step % run.sampleEvery === 0 && !last) await samples(run, r.step);
      if (last) break;
    }
    if (reason === 'finished') {
      const step = stepCount();
      await samples(run, step);
      await exactMatch(run, 'after');
      if (run.checkpointEvery) await checkpoint(step);
    }
  } catch (e) {
    reason = 'error';
    fail('train', e);
  }
  training = false;
  post({ type: 'done', reason, step: stepCount() });
  post({ type: 'state', state: 'idle' });
}

// ---- Chat -------------------------------------------------------------------------------------------
async function handleChat({ messages, opts }) {
  chatStop = false;
  const r = await engine(() =>
    session.generate(messages, opts || {}, (piece) => {
      post({ type: 'chat-token', text: piece });
      return !chatStop;
    }),
  );
  post({ type: 'chat-done', ...r });
}

// ---- Exports ------------------------------------------------------------------------------------------
const baseName = (n) => n.replace(/^.*[\\/]/, '').replace(/\.(gguf|safetensors)$/i, '').replace(/[^\w.-]+/g, '_');

function download(name, bytes, mime) {
  post({ type: 'download', name, bytes, mime }, [bytes.buffer]);
}

async function handleExport({ format, ggufType }) {
  const stem = `${baseName(current.model ? current.model.name : 'model')}-webtune`;
  post({ type: 'export-status', text: `Preparing ${format}…` });
  const t0 = performance.now();
  if (format === 'peft-zip' || format === 'peft-files') {
    const files = await engine(() => session.export_peft());
    if (format === 'peft-zip') download(`${stem}-adapter.zip`, zipStore(files), 'application/zip');
    else for (const [n, b] of Object.entries(files)) download(n, b, n.endsWith('.json') ? 'application/json' : 'application/octet-stream');
  } else if (format === 'merged-zip') {
    const files = await engine(() => session.export_merged());
    download(`${stem}-merged.zip`, zipStore(files), 'application/zip');
  } else if (format === 'gguf') {
    const type = ggufType || 'f16';
    download(`${stem}.${type}.gguf`, await engine(() => session.export_gguf(type)), 'application/octet-stream');
  } else if (format === 'project') {
    const files = await engine(() => session.export_project());
    download(`${stem}-trl-project.zip`, zipStore(files), 'application/zip');
  } else if (format === 'state') {
    const bytes = await engine(() => session.save_state());
    download(`${stem}-step${stepCount()}.state`, bytes, 'application/octet-stream');
  } else {
    throw new Error(`unknown export format ${format}`);
  }
  post({ type: 'export-status', text: `${format} ready in ${((performance.now() - t0) / 1000).toFixed(1)} s.` });
}

async function handleRestore(bytes, label) {
  const plan = await engine(() => session.restore_state(bytes));
  post({ type: 'restored', plan, step: stepCount(), label, info: session.model_info() });
}

// ---- Dispatch ------------------------------------------------------------------------------------------
// Each handler's errors are shown under its own heading on the page.
function run(where, fn) {
  Promise.resolve().then(fn).catch((e) => fail(where, e));
}
const needsIdle = (where, what) => {
  if (!training) return false;
  fail(where, new Error(`stop training before ${what}`));
  return true;
};

self.onmessage = (ev) => {
  const msg = ev.data || {};
  switch (msg.type) {
    case 'init':
      return run('init', handleInit);
    case 'load-model':
      if (needsIdle('model', 'loading another model')) return;
      return run('model', () => engine(() => handleLoadModel(msg)));
    case 'reload-model':
      if (needsIdle('model', 'changing the method')) return;
      return run('model', () => engine(() => handleReloadModel(msg)));
    case 'set-data':
      if (needsIdle('data', 'changing the data')) return;
      return run('data', () => engine(() => handleSetData(msg)));
    case 'preview':
      return run('data', () => engine(() => post({ type: 'preview', preview: session.preview(msg.index) })));
    case 'configure':
      if (needsIdle('settings', 'changing settings')) return;
      return run('settings', () => engine(() => {
        current.settings = msg.settings;
        const plan = session.configure(msg.settings);
        post({ type: 'plan', plan, info: session.model_info(), data: session.data_info() });
      }));
    case 'train':
      if (training) return;
      return run('train', () => trainLoop(msg.run || {}));
    case 'pause':
      paused = true;
      return;
    case 'resume':
      paused = false;
      if (wake) wake();
      return;
    case 'stop':
      stopRequested = true;
      paused = false;
      if (wake) wake();
      return;
    case 'evaluate':
      return run('evaluate', async () => post({ type: 'exact', phase: 'now', ...(await engine(() => session.evaluate(msg.limit || 1e9))) }));
    case 'chat':
      return run('chat', () => handleChat(msg));
    case 'chat-stop':
      chatStop = true;
      return;
    case 'export':
      return run('export', () => handleExport(msg));
    case 'restore':
      if (needsIdle('state', 'loading a training state')) return;
      return run('state', () => handleRestore(new Uint8Array(msg.bytes), msg.name));
    case 'resume-checkpoint':
      if (needsIdle('state', 'resuming a checkpoint')) return;
      return run('state', async () => {
        const ck = await readCheckpoint();
        if (!ck) throw new Error('there is no saved checkpoint in this browser');
        await handleRestore(ck.bytes, `automatic checkpoint at step ${ck.meta.step}`);
      });
    case 'lose-device':
      // Destroy the device before the next step, as a driver reset would.
      loseDevice = true;
      return;
    default:
      fail('worker', new Error(`unknown message ${msg.type}`));
  }
};

self.addEventListener('unhandledrejection', (ev) => fail('worker', ev.reason));
self.addEventListener('error', (ev) => fail('worker', ev.error || ev.message));
