// webtune worker: owns the wasm module, the GPU device and the training loop, so the page
// never freezes. A module worker; every message in and out is a plain object with `type`.
//
// page -> worker                          worker -> page
//   init                                    ready {adapter, caps} | no-webgpu {reason, detail}
//   load-model {source}                     status {text} ; model {info} ; error {where, message}
//   set-data {name, text}                   data {info, preview, plan} ; data-error {name, message, line}
//   configure {settings}                    plan {plan, info}
//   train / pause / resume / stop           step {...} ; eval {...} ; state {state} ; done {reason}
//   chat {prompt}                           chat-reply {text} | error {where: 'chat'}
//   export {format}                         download {name, bytes, mime} | error {where: 'export'}
//
// Engine calls are serialized: the Session is borrowed for the whole of an async call, so
// nothing else touches it while a step runs (the page disables those controls).

import init, { Session, capabilities } from './pkg/webtune.js';

let session = null;
let caps = null;
let training = false;
let paused = false;
let stopRequested = false;
let wake = null; // resolves a paused loop
let plan = null;
let evalEvery = 0;

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

// ---- GPU check (before the wasm module asks for a device) --------------------------------
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
  post({ type: 'ready', adapter: session.adapter_info(), webgpu: check.ok, caps });
}

// ---- Models -------------------------------------------------------------------------------
async function fetchBytes(url, label) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${label}: HTTP ${res.status} ${res.statusText} for ${url}`);
  const total = Number(res.headers.get('content-length')) || 0;
  if (!res.body || !total) return new Uint8Array(await res.arrayBuffer());
  const out = new Uint8Array(total);
  const reader = res.body.getReader();
  let got = 0;
  let lastPost = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (got + value.length > out.length) throw new Error(`${label}: more bytes than announced`);
    out.set(value, got);
    got += value.length;
    const now = Date.now();
    if (now - lastPost > 150) {
      lastPost = now;
      post({ type: 'status', text: `Downloading ${label}: ${(got / 1e6).toFixed(1)} / ${(total / 1e6).toFixed(1)} MB`, progress: got / total });
    }
  }
  return got === total ? out : out.subarray(0, got);
}

// HOOK(hub): the hub-loading branch replaces this with the engine's own hub URLs (revision,
// sharded index, .gguf files, auth-free mirrors). Today: config.json + model.safetensors
// from the model's main branch, which covers single-file safetensors models.
const HUB_BASE = 'https://huggingface.co';
async function fetchHubFiles(id) {
  if (!/^[\w.-]+\/[\w.-]+$/.test(id)) throw new Error(`"${id}" is not a Hugging Face model id (owner/name)`);
  const base = `${HUB_BASE}/${id}/resolve/main`;
  const files = {};
  files['config.json'] = await fetchBytes(`${base}/config.json`, `${id}/config.json`);
  files['model.safetensors'] = await fetchBytes(`${base}/model.safetensors`, `${id}/model.safetensors`);
  return files;
}

// source: {kind: 'url-hf', name, base, files: [names]} | {kind: 'url-gguf', name, url}
//       | {kind: 'files', name, files: {name: ArrayBuffer}} | {kind: 'hub', id}
async function handleLoadModel(source) {
  let info;
  const t0 = performance.now();
  if (source.kind === 'url-hf') {
    const files = {};
    for (const f of source.files) files[f] = await fetchBytes(new URL(f, new URL(source.base, self.location.href)), f);
    post({ type: 'status', text: `Uploading ${source.name} to the GPU…` });
    info = session.load_hf(source.name, files);
  } else if (source.kind === 'url-gguf') {
    const bytes = await fetchBytes(new URL(source.url, self.location.href), source.name);
    post({ type: 'status', text: `Loading ${source.name}…` });
    info = session.load_gguf(source.name, bytes);
  } else if (source.kind === 'files') {
    const names = Object.keys(source.files);
    const gguf = names.find((n) => n.toLowerCase().endsWith('.gguf'));
    post({ type: 'status', text: `Loading ${source.name} to the GPU…` });
    if (gguf) {
      info = session.load_gguf(gguf, new Uint8Array(source.files[gguf]));
    } else {
      const files = {};
      for (const n of names) files[n] = new Uint8Array(source.files[n]);
      info = session.load_hf(source.name, files);
    }
  } else if (source.kind === 'hub') {
    const files = await fetchHubFiles(source.id.trim());
    post({ type: 'status', text: `Uploading ${source.id} to the GPU…` });
    info = session.load_hf(source.id.trim(), files);
  } else {
    throw new Error(`unknown model source ${source.kind}`);
  }
  post({ type: 'model', info, ms: performance.now() - t0, plan: session.plan() });
}

// ---- Data ---------------------------------------------------------------------------------
function handleSetData({ name, text, url }) {
  return (async () => {
    if (url) {
      const res = await fetch(url);
      if (!res.ok) throw new Error(`${name}: HTTP ${res.status} for ${url}`);
      text = await res.text();
    }
    try {
      // HOOK(tokenizer): text formats ({"prompt","completion"}, {"messages"}, {"text"})
      // go to a set_data_text() once the tokenizer lands; today only tokenized lines.
      const info = session.set_data_tokenized(name, text);
      post({ type: 'data', info, preview: session.preview(6), plan: session.plan() });
    } catch (e) {
      const message = describe(e);
      const m = message.match(/:(\d+): /);
      const line = m ? Number(m[1]) : null;
      const lineText = line ? (text.split('\n')[line - 1] || '').slice(0, 200) : null;
      post({ type: 'data-error', name, message, line, lineText });
    }
  })();
}

// ---- Training loop ------------------------------------------------------------------------
async function trainLoop() {
  training = true;
  stopRequested = false;
  paused = false;
  post({ type: 'state', state: 'training' });
  let reason = 'finished';
  try {
    plan = session.plan();
    const total = plan.total_steps;
    while (session.step_count() < total) {
      if (stopRequested) { reason = 'stopped'; break; }
      if (paused) {
        post({ type: 'state', state: 'paused' });
        await new Promise((r) => (wake = r));
        wake = null;
        if (!stopRequested) post({ type: 'state', state: 'training' });
        continue;
      }
      const r = await session.step();
      post({ type: 'step', ...r });
      if (evalEvery > 0 && (r.step % evalEvery === 0 || r.step === total)) {
        const ev = await session.score();
        post({ type: 'eval', step: r.step, ...ev });
      }
    }
  } catch (e) {
    reason = 'error';
    fail('train', e);
  }
  training = false;
  post({ type: 'done', reason, step: session.step_count() });
  post({ type: 'state', state: 'idle' });
}

// ---- Dispatch -----------------------------------------------------------------------------
// Messages that use the engine run one after another (a queue); pause/resume/stop act at
// once, between steps.
let queue = Promise.resolve();
function enqueue(where, fn) {
  queue = queue.then(fn).catch((e) => fail(where, e));
}

self.onmessage = (ev) => {
  const msg = ev.data || {};
  switch (msg.type) {
    case 'init':
      enqueue('init', handleInit);
      break;
    case 'load-model':
      if (training) return fail('model', new Error('stop training before loading another model'));
      enqueue('model', () => handleLoadModel(msg.source));
      break;
    case 'set-data':
      if (training) return fail('data', new Error('stop training before changing the data'));
      enqueue('data', () => handleSetData(msg));
      break;
    case 'configure':
      if (training) return fail('settings', new Error('stop training before changing settings'));
      enqueue('settings', () => {
        evalEvery = Number(msg.settings.eval_every) || 0;
        const p = session.configure(msg.settings);
        post({ type: 'plan', plan: p, info: session.model_info(), data: session.data_info() });
      });
      break;
    case 'train':
      if (training) return;
      // Not queued behind itself: the loop runs while pause/stop messages keep arriving.
      enqueue('train', () => { trainLoop(); });
      break;
    case 'pause':
      paused = true;
      break;
    case 'resume':
      paused = false;
      if (wake) wake();
      break;
    case 'stop':
      stopRequested = true;
      paused = false;
      if (wake) wake();
      break;
    case 'score':
      if (training) return fail('score', new Error('the validation loss is reported during training; ask again when it stops'));
      enqueue('score', async () => post({ type: 'eval', step: session.step_count(), ...(await session.score()) }));
      break;
    case 'chat':
      // HOOK(generate): session.generate(prompt, {max_tokens, temperature}) with the KV cache.
      fail('chat', new Error('Chat lands with generation (KV cache); this build trains only.'));
      break;
    case 'export':
      // HOOK(export): session.export_peft() / export_safetensors() / export_gguf() return
      // bytes; post {type: 'download', name, bytes, mime} with bytes.buffer transferred.
      fail('export', new Error(`Download (${msg.format}) lands with the export branch; this build trains only.`));
      break;
    default:
      fail('worker', new Error(`unknown message ${msg.type}`));
  }
};

self.addEventListener('unhandledrejection', (ev) => fail('worker', ev.reason));
self.addEventListener('error', (ev) => fail('worker', ev.error || ev.message));
