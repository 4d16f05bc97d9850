// webtune page: the UI. The engine (wasm + GPU) lives in worker.js; this file only sends
// it messages and draws what comes back, so the page never freezes during training.

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

// ---- Catalog --------------------------------------------------------------------------------
const MODELS = {
  // scripts/serve.sh links the file fetched by scripts/fetch-model.sh here.
  smollm2: { kind: 'url', name: 'SmolLM2-135M-Instruct.Q4_1.gguf', url: 'models/SmolLM2-135M-Instruct.Q4_1.gguf' },
  demo: { kind: 'url-hf', name: 'engine demo (tiny Llama)', base: 'demo/', files: ['config.json', 'model.safetensors'] },
};
const DATASETS = {
  sentiment: { train: { name: 'sentiment-train.jsonl', url: 'demo/sentiment-train.jsonl' }, eval: { name: 'sentiment-eval.jsonl', url: 'demo/sentiment-eval.jsonl' } },
  contacts: { train: { name: 'contacts-train.jsonl', url: 'demo/contacts-train.jsonl' }, eval: { name: 'contacts-eval.jsonl', url: 'demo/contacts-eval.jsonl' } },
  count: { train: { name: 'count.jsonl', url: 'demo/count.jsonl' }, eval: null },
};

// ---- Settings (persisted) -------------------------------------------------------------------
const SETTINGS_KEY = 'webtune.settings.v2';
const PAGE_KEY = 'webtune.page.v2'; // model/data choices, hub id, chat options
const form = $('#settings');
const fieldValue = (e) => (e.type === 'radio' ? (e.checked ? e.value : undefined) : e.type === 'checkbox' ? e.checked : e.value);
// The page's own fields' defaults (from the HTML); the engine's settings come with
// `ready` (`default_settings()`), the one set of defaults there is.
let DEFAULTS = Object.fromEntries(
  Array.from(form.elements).filter((e) => e.name).map((e) => [e.name, fieldValue(e)]).filter(([, v]) => v !== undefined),
);

function readForm() {
  const out = {};
  for (const e of form.elements) {
    const v = e.name ? fieldValue(e) : undefined;
    if (v !== undefined) out[e.name] = v;
  }
  return out;
}

function writeForm(values) {
  for (const e of form.elements) {
    if (!e.name || !(e.name in values)) continue;
    if (e.type === 'radio') e.checked = e.value === values[e.name];
    else if (e.type === 'checkbox') e.checked = !!values[e.name];
    else e.value = values[e.name];
  }
}

function loadJSON(key) {
  try {
    const v = JSON.parse(localStorage.getItem(key) || 'null');
    return v && typeof v === 'object' ? v : null;
  } catch { return null; } // a broken entry: keep the defaults
}
function saveJSON(key, v) {
  try { localStorage.setItem(key, JSON.stringify(v)); } catch { /* private mode or full */ }
}

const PAGE_FIELDS = ['#hub-id', '#hub-endpoint', '#hub-revision', '#chat-max', '#chat-temp'];
function savePage() {
  const v = { model: selectedModel(), data: selectedData() };
  for (const sel of PAGE_FIELDS) v[sel] = $(sel).value;
  saveJSON(PAGE_KEY, v);
}
function loadPage() {
  const v = loadJSON(PAGE_KEY) || {};
  for (const sel of PAGE_FIELDS) if (typeof v[sel] === 'string') $(sel).value = v[sel];
  // A test (or a link) can point the hub at a mirror: ?hub=https://mirror.example
  const hub = new URLSearchParams(location.search).get('hub');
  if (hub) $('#hub-endpoint').value = hub;
  // Local files and uploads are not kept across reloads, so those choices fall back.
  const model = v.model && (MODELS[v.model] || v.model === 'hub') ? v.model : 'smollm2';
  $(`input[name=model][value=${model}]`).checked = true;
  const data = v.data && (DATASETS[v.data] || v.data === 'upload') ? v.data : model === 'demo' ? 'count' : 'sentiment';
  $(`input[name=data][value=${data}]`).checked = true;
}

// The LoRA part of the form as load_model's `lora` argument (null: full fine-tuning).
// The target boxes are the loaded architecture's linear layers (the engine's
// `lora_targets`); all ticked is PEFT's "all-linear", which the engine expands for
// whatever architecture it loads.
function loraSettings() {
  const f = readForm();
  if (f.method !== 'lora') return null;
  const boxes = $$('#lora-targets input[type=checkbox]');
  const ticked = boxes.filter((b) => b.checked).map((b) => b.dataset.target);
  const targets = ticked.length === boxes.length || ticked.includes('all-linear') ? 'all-linear' : ticked;
  return { rank: Math.round(Number(f.lora_rank)), alpha: Number(f.lora_alpha), targets, base: f.base || 'auto' };
}

// One box per linear layer the loaded model's architecture has, ticked as it was loaded.
function showTargets(info) {
  const names = info.lora_targets || [];
  const on = info.lora ? info.lora.targets : names;
  $('#lora-targets').replaceChildren(...names.map((t) => {
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.dataset.target = t;
    box.checked = on.includes(t);
    box.addEventListener('change', () => configure());
    label.append(box, ` ${t.replace(/_proj$/, '')}`);
    return label;
  }));
}

// The engine's settings (`default_settings()`, a plan's `settings`) as form values.
function settingsToForm(s) {
  const str = (x) => String(typeof x === 'number' ? Number(x.toPrecision(6)) : x);
  return {
    method: s.method, lora_rank: str(s.lora_rank), lora_alpha: str(s.lora_alpha), base: s.base, loss: s.loss, lr: str(s.lr),
    schedule: s.schedule, warmup: str(s.warmup), batch: str(s.batch), accum: str(s.grad_accum),
    length: str(s.steps != null ? s.steps : s.epochs), length_unit: s.steps != null ? 'steps' : 'epochs',
    max_len: str(s.max_len), max_grad_norm: str(s.max_grad_norm), weight_decay: str(s.weight_decay), seed: str(s.seed),
    val_share: str(s.val_share), val_limit: str(s.val_limit), eval_every: str(s.eval_every),
  };
}

// The form's values as the engine's `configure` keys.
function engineSettings() {
  const f = readForm();
  const s = {
    loss: f.loss,
    lr: Number(f.lr),
    schedule: f.schedule,
    warmup: Math.round(Number(f.warmup) || 0),
    batch: Math.max(1, Math.round(Number(f.batch) || 1)),
    grad_accum: Math.max(1, Math.round(Number(f.accum) || 1)),
    max_len: Math.round(Number(f.max_len)),
    max_grad_norm: Number(f.max_grad_norm),
    weight_decay: Number(f.weight_decay),
    seed: Math.round(Number(f.seed) || 0),
    val_share: Number(f.val_share),
    val_limit: Math.max(0, Math.round(Number(f.val_limit) || 0)),
    eval_every: Math.round(Number(f.eval_every) || 0),
  };
  if (f.length_unit === 'epochs') s.epochs = Math.max(1, Math.round(Number(f.length) || 1));
  else s.steps = Math.max(1, Math.round(Number(f.length) || 1));
  return s;
}

// What the training loop does besides stepping (the page's own settings).
function runSettings() {
  const f = readForm();
  const n = (k) => Math.max(0, Math.round(Number(f[k]) || 0));
  return {
    evalItems: n('eval_items'),
    sampleEvery: n('sample_every'),
    sampleTokens: Math.max(1, n('sample_tokens')),
    checkpointEvery: n('checkpoint_every'),
    samples: state.samplePrompts.slice(0, n('sample_prompts')),
  };
}

// ---- Worker -------------------------------------------------------------------------------
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const send = (msg, transfer) => worker.postMessage(msg, transfer || []);

const state = {
  ready: false,
  modelLoaded: false,
  modelInfo: null,
  dataLoaded: false,
  dataInfo: null,
  training: 'idle', // idle | training | paused
  busy: false, // a model or data load in flight
  plan: null,
  planOk: false,
  steps: [], // step reports
  evals: [], // {step, loss}
  exact: {}, // phase -> {score, correct, total, items}
  samples: [], // {step, items: [{label, text}]}
  samplePrompts: [],
  checkpoints: [],
  recoveries: 0,
  localFiles: null, // {name, files: {name: File}}
  uploaded: null, // {name, text}
  uploadedEval: null,
  caps: {},
  savedCheckpoint: null,
  previewIndex: 0,
  chat: [], // [{role, content}]
  chatBusy: false,
  downloads: [], // names, for tests
  progress: [], // the model's download progress messages, for tests
  chatPieces: 0, // streamed pieces of the last reply
  loadedLora: undefined, // the LoRA settings the model was loaded with
};
// For tests and the console.
window.webtune = { state, loseDevice: () => send({ type: 'lose-device' }) };

worker.onmessage = (ev) => {
  const m = ev.data;
  const h = handlers[m.type];
  if (h) h(m);
  else showError('page', `unexpected message from the worker: ${m.type}`);
};
worker.onerror = (ev) => {
  ev.preventDefault();
  showError('worker', ev.message || 'the worker failed to start (is www/pkg built? run scripts/serve.sh)');
  setBadge('error', 'Engine failed to start');
};
worker.onmessageerror = () => showError('worker', 'a message from the worker could not be read');

const handlers = {
  ready(m) {
    state.ready = true;
    state.caps = m.caps || {};
    DEFAULTS = { ...DEFAULTS, ...settingsToForm(m.defaults) };
    if (!loadJSON(SETTINGS_KEY)) { writeForm(DEFAULTS); showLossHint(); }
    state.savedCheckpoint = m.checkpoint || null;
    const a = m.adapter;
    const w = m.webgpu || {};
    // Browsers hide the adapter's name; vendor and architecture are what they tell.
    const name = a.name || [w.vendor, w.architecture].filter(Boolean).join(' ') || 'GPU';
    setBadge('ok', `WebGPU · ${name}${a.software ? ' (software)' : ''}`);
    $('#gpu-badge').title = `WebGPU adapter: ${name}${w.description ? ` (${w.description})` : ''}, ${a.device_type}; largest buffer ${fmtBytes(a.max_binding_bytes)}; matmul kernel ${a.matmul}`;
    $('#engine-version').textContent = `webtune ${state.caps.version || ''}`;
    refreshButtons();
    // Start with the preselected model (and then its dataset).
    if (selectedModel() !== 'local' && selectedModel() !== 'hub') loadModel();
  },
  'no-webgpu'(m) {
    showNoWebGPU(m.detail);
  },
  progress(m) {
    state.progress.push(m);
    setStatus('#model-status', m.text);
    const bar = $('#model-progress');
    bar.hidden = false;
    bar.classList.toggle('indeterminate', typeof m.progress !== 'number');
    bar.firstElementChild.style.width = typeof m.progress === 'number' ? `${(m.progress * 100).toFixed(1)}%` : '100%';
  },
  model(m) {
    state.busy = false;
    state.modelLoaded = true;
    state.modelInfo = m.info;
    showTargets(m.info);
    state.loadedLora = loraSettings();
    $('#model-progress').hidden = true;
    $('#model-error').hidden = true;
    setStatus('#model-status', `${m.reloaded ? 'Reloaded' : 'Loaded'} in ${fmtMs(m.ms)}`, 'ok');
    showModelInfo(m.info, m.plan);
    resetRun();
    if (m.plan) onPlan(m.plan);
    // A fresh model has no data: read the chosen dataset (a reload keeps it, and says so
    // with a `data` message of its own).
    if (!m.data && !m.reloaded) loadData();
    else configure();
    refreshButtons();
  },
  data(m) {
    state.busy = false;
    state.dataLoaded = true;
    state.dataInfo = m.info;
    $('#data-error').hidden = true;
    setStatus('#data-status', `${m.info.name}: ${m.info.examples} examples${m.info.eval_name ? `; ${m.info.eval_name}: ${m.info.eval} held out` : ''}`, 'ok');
    showDataInfo(m.info);
    state.previewIndex = 0;
    showPreview(m.preview);
    // The fixed prompts the samples follow: the engine's (the first held-out examples,
    // else the first training ones, cut before their answer).
    state.samplePrompts = m.info.samples || [];
    state.samples = [];
    showSamples();
    resetRun();
    configure();
    refreshButtons();
  },
  'data-error'(m) {
    state.busy = false;
    state.dataLoaded = false;
    setStatus('#data-status', '');
    showDataError(m);
    refreshButtons();
  },
  preview(m) {
    showPreview(m.preview);
  },
  plan(m) {
    $('#settings-error').hidden = true;
    if (m.info) showModelInfo(m.info, m.plan);
    if (m.data && m.data.examples) showDataInfo(m.data);
    onPlan(m.plan);
    refreshButtons();
    if (state.trainAfterReload && state.modelLoaded && state.dataLoaded && !state.busy) {
      state.trainAfterReload = false;
      startTraining();
    }
  },
  state(m) {
    state.training = m.state;
    const label = { training: 'Training…', paused: 'Paused (chat and downloads work meanwhile).', idle: '' }[m.state];
    if (label) setStatus('#train-status', label);
    refreshButtons();
  },
  step(m) {
    state.steps.push(m);
    chart.addStep(m.step, m.loss);
    if (m.valid_loss != null) handlers.valid({ step: m.step, loss: m.valid_loss });
    showStep(m);
  },
  valid(m) {
    state.evals.push({ step: m.step, loss: m.loss });
    chart.addVal(m.step, m.loss);
    $('#st-val').textContent = fmtLoss(m.loss);
  },
  samples(m) {
    state.samples.push(m);
    showSamples();
  },
  exact(m) {
    state.exact[m.phase] = m;
    showExact();
  },
  checkpoint(m) {
    state.checkpoints.push(m);
    $('#train-progress').title = `last automatic checkpoint: step ${m.step}${m.stored ? ' (kept in this browser)' : ' (in memory only)'}`;
  },
  recovering(m) {
    setStatus('#train-status', `The GPU device was lost (${m.reason}); restarting from the last checkpoint…`, 'err');
  },
  recovered(m) {
    state.recoveries++;
    // The steps after the checkpoint are done again: drop them from the chart.
    state.steps = state.steps.filter((s) => s.step <= m.step);
    chart.truncate(m.step);
    setStatus('#train-status', `Recovered from a lost GPU device at step ${m.step}; training goes on.`, 'ok');
  },
  restored(m) {
    clearTimeout(configureTimer); // a pending form update must not replace the restored run
    resetRun();
    state.restoredAt = m.step;
    onPlan(m.plan);
    writeForm({ ...planToForm(m.plan) });
    saveSettings();
    setProgress(m.step, m.plan.total_steps);
    $('#st-step').textContent = `${m.step} / ${m.plan.total_steps}`;
    setStatus('#train-status', `Restored the ${m.label || 'training state'}: step ${m.step} of ${m.plan.total_steps}. Train to continue.`, 'ok');
    refreshButtons();
  },
  done(m) {
    const text = { finished: `Done: ${m.step} steps.`, stopped: `Stopped at step ${m.step}.`, error: `Stopped by an error at step ${m.step}.` }[m.reason];
    setStatus('#train-status', text, m.reason === 'error' ? 'err' : 'ok');
    state.lastDone = m;
    if (m.reason === 'finished') $('#st-eta').textContent = '0 s';
  },
  error(m) {
    if (m.where === 'model') {
      state.busy = false;
      $('#model-progress').hidden = true;
      setStatus('#model-status', '');
      const el = $('#model-error');
      el.textContent = m.message;
      el.hidden = false;
    } else if (m.where === 'settings') {
      const el = $('#settings-error');
      el.textContent = m.message;
      el.hidden = false;
      state.planOk = false;
    } else if (m.where === 'chat') {
      state.chatBusy = false;
      addChat('note', m.message);
    } else if (m.where === 'export') {
      $('#export-status').textContent = m.message;
      $('#export-status').dataset.kind = 'err';
    } else {
      if (m.where === 'data') state.busy = false;
      showError(m.where, m.message);
    }
    refreshButtons();
  },
  'chat-token'(m) {
    state.chatPieces++;
    const p = $('#chat-log .msg-model:last-child');
    if (p) p.textContent += m.text;
    $('#chat-log').scrollTop = 1e9;
  },
  'chat-done'(m) {
    state.chatBusy = false;
    const p = $('#chat-log .msg-model:last-child');
    if (p) {
      p.textContent = m.text; // the whole text, decoded at once (the pieces can split characters)
      const meta = document.createElement('small');
      meta.textContent = `${m.tokens} tokens, ${m.tokens_per_s.toFixed(1)} tokens/s`;
      p.after(meta);
    }
    state.chat.push({ role: 'assistant', content: m.text });
    refreshButtons();
  },
  'export-status'(m) {
    $('#export-status').textContent = m.text;
    $('#export-status').dataset.kind = '';
  },
  download(m) {
    state.downloads.push(m.name);
    const blob = new Blob([m.bytes], { type: m.mime || 'application/octet-stream' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = m.name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  },
};

// ---- Messages on the page -------------------------------------------------------------------
function setBadge(kind, text) {
  const b = $('#gpu-badge');
  b.dataset.state = kind;
  b.textContent = text;
}

function setStatus(sel, text, kind) {
  const el = $(sel);
  el.textContent = text || '';
  el.dataset.kind = kind || '';
}

const WHERE = { init: 'Starting the engine', model: 'Model', data: 'Data', settings: 'Settings', train: 'Training', evaluate: 'Evaluation', state: 'Training state', worker: 'Engine', page: 'Page' };
function showError(where, message) {
  const box = document.createElement('div');
  box.className = 'error-item';
  box.setAttribute('role', 'alert');
  const title = document.createElement('b');
  title.textContent = `${WHERE[where] || where}: `;
  const text = document.createElement('span');
  text.textContent = message;
  const close = document.createElement('button');
  close.className = 'close';
  close.textContent = '×';
  close.title = 'Dismiss';
  close.onclick = () => box.remove();
  box.append(title, text, close);
  $('#errors').append(box);
}

function showNoWebGPU(detail) {
  $('#no-webgpu').hidden = false;
  document.body.classList.add('no-gpu');
  $('#no-webgpu-detail').textContent = detail;
  setBadge('error', 'No WebGPU');
  for (const b of $$('button.primary')) b.disabled = true;
}

// ---- Model panel ----------------------------------------------------------------------------
const selectedModel = () => $('input[name=model]:checked').value;

function onModelChoice() {
  const v = selectedModel();
  $('#local-drop').hidden = v !== 'local';
  $('#hub-row').hidden = v !== 'hub';
  // The counting data is token ids for the engine demo's vocabulary only.
  $('#choice-count').hidden = v !== 'demo';
  savePage();
  refreshButtons();
}

function modelSource() {
  const v = selectedModel();
  if (v === 'local') return state.localFiles ? { kind: 'files', name: state.localFiles.name, files: state.localFiles.files } : null;
  if (v === 'hub') {
    const id = $('#hub-id').value.trim();
    return id ? { kind: 'hub', id, endpoint: $('#hub-endpoint').value.trim() || 'https://huggingface.co', revision: $('#hub-revision').value.trim() || 'main' } : null;
  }
  return MODELS[v];
}

function loadModel() {
  if (!state.ready || state.training !== 'idle') return;
  const source = modelSource();
  if (!source) { if (selectedModel() === 'hub') $('#hub-id').focus(); return; }
  if (selectedModel() === 'demo' && selectedData() !== 'count') $('input[name=data][value=count]').checked = true;
  if (selectedModel() !== 'demo' && selectedData() === 'count') $('input[name=data][value=sentiment]').checked = true;
  state.busy = true;
  state.modelLoaded = false;
  state.dataLoaded = false;
  $('#model-error').hidden = true;
  $('#model-info').hidden = true;
  setStatus('#model-status', 'Loading…');
  refreshButtons();
  const lora = loraSettings();
  if (source.kind === 'files') {
    // Read the files here; the buffers move to the worker without a copy.
    Promise.all(Object.entries(source.files).map(async ([n, f]) => [n, await f.arrayBuffer()]))
      .then((entries) => send({ type: 'load-model', source: { ...source, files: Object.fromEntries(entries) }, lora }, entries.map(([, b]) => b)))
      .catch((e) => handlers.error({ where: 'model', message: `could not read the files: ${e.message}` }));
  } else {
    send({ type: 'load-model', source, lora });
  }
}

const MODEL_FILE = /(\.gguf|\.safetensors|\.json|\.jinja)$/i;
function takeModelFiles(fileList) {
  const files = {};
  let folder = '';
  for (const f of fileList) {
    const path = f.webkitRelativePath || f.name;
    if (!folder && path.includes('/')) folder = path.split('/')[0];
    const base = path.split('/').pop();
    if (MODEL_FILE.test(base)) files[base] = f;
  }
  const names = Object.keys(files);
  if (!names.some((n) => /\.(gguf|safetensors)$/i.test(n))) {
    handlers.error({ where: 'model', message: `none of those files holds weights: choose a .gguf file, or a Hugging Face folder with config.json and *.safetensors (got: ${Array.from(fileList).map((f) => f.name).join(', ') || 'nothing'})` });
    return;
  }
  const gguf = names.find((n) => n.toLowerCase().endsWith('.gguf'));
  // A .gguf alone when both came (a folder with both): the GGUF carries its tokenizer.
  const chosen = gguf ? { [gguf]: files[gguf] } : files;
  state.localFiles = { name: gguf || folder || names.find((n) => n.endsWith('.safetensors')) || 'local model', files: chosen };
  const size = Object.values(chosen).reduce((s, f) => s + f.size, 0);
  $('#local-files-list').textContent = `${Object.keys(chosen).join(', ')} (${fmtBytes(size)})`;
  $('input[name=model][value=local]').checked = true;
  onModelChoice();
}

function memoryText(mem) {
  if (!mem) return '–';
  if (mem.error) return mem.error;
  const parts = [`weights ${fmtBytes(mem.frozen_weights + mem.trainable_weights)}`, `grads + AdamW ${fmtBytes(mem.grads_and_moments)}`, `activations ${fmtBytes(mem.activations)}`];
  return `${fmtBytes(mem.total)} (${parts.join(', ')})${mem.fits ? '' : ' — does not fit'}`;
}

function showModelInfo(i, plan) {
  if (!i) return;
  state.modelInfo = i;
  const dl = $('#model-info');
  dl.hidden = false;
  const lora = i.lora ? `LoRA r=${i.lora.rank}, alpha ${i.lora.alpha} on ${i.lora.targets.join(', ')}` : 'full fine-tuning';
  dl.replaceChildren(
    ...facts([
      ['Model', i.name],
      ['Architecture', `${i.arch}, ${i.layers} layers, hidden ${i.hidden}, ${i.heads}/${i.kv_heads} heads, FFN ${i.ffn}`],
      ['Parameters', `${fmtCount(i.params)}; trained: ${fmtCount(i.trainable)} (${lora})`],
      ['Vocabulary', `${i.vocab} tokens${i.tokenizer ? '' : ' (no tokenizer)'}, up to ${i.max_seq} positions${i.chat_template ? ', chat template' : ''}`],
      ['Weights on the GPU', `${i.base_precision}: ${fmtBytes(i.weight_bytes)}`],
      ['GPU memory (est.)', memoryText((plan && plan.memory) || i.memory)],
    ]),
  );
}

// ---- Data panel -----------------------------------------------------------------------------
const selectedData = () => $('input[name=data]:checked').value;

function loadData() {
  if (!state.ready || !state.modelLoaded || state.training !== 'idle') return;
  $('#data-error').hidden = true;
  let msg;
  if (selectedData() === 'upload') {
    if (!state.uploaded) {
      configure(); // no data yet: the plan and memory still follow the settings
      return;
    }
    msg = { type: 'set-data', train: state.uploaded, eval: state.uploadedEval };
  } else {
    const d = DATASETS[selectedData()];
    const abs = (f) => f && { name: f.name, url: new URL(f.url, location.href).href };
    msg = { type: 'set-data', train: abs(d.train), eval: abs(d.eval) };
  }
  state.busy = true;
  setStatus('#data-status', 'Reading and tokenizing…');
  refreshButtons();
  send(msg);
}


async function readUpload(file) {
  try {
    return { name: file.name, text: await file.text() };
  } catch (e) {
    showDataError({ name: file.name, message: `could not read ${file.name}: ${e.message}` });
    return null;
  }
}

async function takeDataFile(file) {
  if (!file) return;
  const u = await readUpload(file);
  if (!u) return;
  state.uploaded = u;
  $('#data-file-name').textContent = `${u.name} (${fmtBytes(file.size)})`;
  $('input[name=data][value=upload]').checked = true;
  onDataChoice();
}

async function takeEvalFile(file) {
  state.uploadedEval = file ? await readUpload(file) : null;
  $('#eval-file-name').textContent = state.uploadedEval ? state.uploadedEval.name : '';
  $('#eval-clear').hidden = !state.uploadedEval;
  if (selectedData() === 'upload' && state.uploaded) loadData();
}

function onDataChoice() {
  $('#data-drop').hidden = selectedData() !== 'upload';
  savePage();
  if (selectedData() !== 'upload' || state.uploaded) loadData();
}

function showDataError(m) {
  const box = $('#data-error');
  box.replaceChildren();
  const head = document.createElement('p');
  const b = document.createElement('b');
  b.textContent = m.line ? `${m.name}, line ${m.line}: ` : `${m.name}: `;
  const msg = document.createElement('span');
  // The engine says "data: name:line: what"; the heading already carries name and line.
  msg.textContent = m.message.replace(/^data: /, '').replace(`${m.name}:${m.line}: `, '');
  head.append(b, msg);
  box.append(head);
  if (m.lineText != null) {
    const pre = document.createElement('pre');
    pre.textContent = `${m.line} | ${m.lineText}`;
    box.append(pre);
  }
  box.hidden = false;
  $('#data-info').hidden = true;
  $('#mask-head').hidden = true;
  $('#mask-nav').hidden = true;
  $('#mask-preview').replaceChildren();
}

function showDataInfo(i) {
  state.dataInfo = i;
  const dl = $('#data-info');
  dl.hidden = false;
  const held = i.eval ? `${i.eval} in ${i.eval_name} (held out)` : `${i.val} (a ${Math.round((Number(readForm().val_share) || 0) * 100)}% share)`;
  dl.replaceChildren(
    ...facts([
      ['Examples', `${i.examples} in ${i.name}: ${i.train} to train`],
      ['Evaluation', held],
      ['Tokens', `${fmtCount(i.tokens)}, of which ${fmtCount(i.trained_tokens)} trained; longest example ${i.longest}`],
      ...(i.truncated ? [['Truncated', `${i.truncated} examples are longer than the max length (${i.max_len})`]] : []),
      ...(i.warning ? [['Note', i.warning]] : []),
    ]),
  );
}

// Token text made visible: spaces, newlines and tabs as marks.
const visible = (t) => t.replace(/ /g, '·').replace(/\n/g, '↵').replace(/\t/g, '→');

function showPreview(p) {
  const box = $('#mask-preview');
  box.replaceChildren();
  $('#mask-head').hidden = !p;
  $('#mask-nav').hidden = !p;
  if (!p) return;
  state.previewIndex = p.index;
  $('#mask-where').textContent = `Example ${p.index + 1} of ${p.count} (${p.origin})`;
  $('#mask-prev').disabled = p.index <= 0;
  $('#mask-next').disabled = p.index + 1 >= p.count;
  for (const t of p.tokens) {
    const i = document.createElement('i');
    i.className = `tok ${t.cut ? 'tok-cut' : t.trained ? 'tok-trained' : 'tok-prompt'}`;
    i.textContent = t.text != null ? visible(t.text) : String(t.id);
    i.title = `token ${t.id}${t.trained ? ', trained' : ''}${t.cut ? ', beyond the max length' : ''}`;
    box.append(i);
  }
}

function previewStep(delta) {
  send({ type: 'preview', index: Math.max(0, state.previewIndex + delta) });
}

// ---- Settings -------------------------------------------------------------------------------
function saveSettings() { saveJSON(SETTINGS_KEY, readForm()); }

let configureTimer = 0;
function configure() {
  clearTimeout(configureTimer);
  configureTimer = setTimeout(() => {
    saveSettings();
    if (!state.ready || !state.modelLoaded || state.training !== 'idle') return;
    // LoRA or full, rank, alpha and targets are fixed when the model loads: reload it
    // (from the bytes the worker kept) when they change.
    const lora = loraSettings();
    if (JSON.stringify(lora) !== JSON.stringify(state.loadedLora)) {
      state.busy = true;
      state.loadedLora = lora;
      refreshButtons();
      send({ type: 'reload-model', lora });
      return;
    }
    send({ type: 'configure', settings: engineSettings() });
  }, 200);
}

const LOSS_HINTS = {
  'per-example': 'Mean over examples of each answer\'s mean token loss: short and long answers weigh the same.',
  'per-token': 'Mean over all answer tokens of the batch: long answers weigh more.',
  'all-tokens': 'Every next-token prediction counts, prompt included (continued pre-training).',
};
function showLossHint() {
  $('#loss-hint').textContent = LOSS_HINTS[form.elements.loss.value] || '';
  $('#lora-settings').hidden = readForm().method !== 'lora';
}

// The plan as form values (after a restored state replaced the run's settings).
function planToForm(p) {
  return settingsToForm({ ...p.settings, max_len: p.max_len });
}

function onPlan(p) {
  state.plan = p;
  const mem = p.memory || {};
  state.planOk = !mem.error && mem.fits !== false;
  const acc = p.grad_accum > 1 ? ` (${p.micro_batch} per pass × ${p.grad_accum} passes)` : '';
  const data = state.dataInfo;
  const ep = data && data.train ? `, ${p.epochs.toFixed(p.epochs < 10 ? 2 : 1)} epochs of ${data.train} examples` : '';
  const plan = `Plan: ${p.total_steps} steps of ${p.batch} examples${acc}${ep}; ${p.loss} loss, lr ${Number(p.lr.toPrecision(4))} ${p.schedule}${p.warmup ? ` after ${p.warmup} warm-up steps` : ''}; GPU memory about ${fmtBytes(mem.total)}.`;
  const el = $('#plan-text');
  el.textContent = state.planOk ? plan : `Refused: ${mem.error || `a single buffer of this configuration exceeds the adapter's largest binding (${fmtBytes(mem.max_binding_bytes)}, maxStorageBufferBindingSize): lower the batch size (or raise gradient accumulation) or the max length`}.`;
  el.dataset.kind = state.planOk ? '' : 'err';
  if (state.modelInfo) showModelInfo(state.modelInfo, p);
  const done = p.done || 0;
  setProgress(done, p.total_steps);
  chart.setTotal(p.total_steps);
}

// ---- Training -------------------------------------------------------------------------------
function resetRun() {
  if (state.training === 'idle') setStatus('#train-status', '');
  state.steps = [];
  state.evals = [];
  state.exact = {};
  state.samples = [];
  state.restoredAt = 0;
  chart.reset();
  showExact();
  showSamples();
  for (const id of ['step', 'loss', 'val', 'norm', 'tps', 'ms', 'lr', 'eta']) $(`#st-${id}`).textContent = '–';
  setProgress(0, state.plan ? state.plan.total_steps : 1);
}

const stepsDone = () => (state.steps.length ? state.steps[state.steps.length - 1].step : state.restoredAt || 0);

function startTraining() {
  if (state.training !== 'idle') return;
  const done = stepsDone();
  if (state.plan && done >= state.plan.total_steps) {
    // A finished run: training again starts from the model's original weights.
    state.busy = true;
    send({ type: 'reload-model', lora: loraSettings() });
    state.trainAfterReload = true;
    return;
  }
  setStatus('#train-status', done ? 'Continuing…' : 'Starting… (scoring the base model first; the first step compiles the GPU kernels)');
  send({ type: 'train', run: runSettings() });
  state.training = 'training';
  refreshButtons();
}

function setProgress(done, total) {
  const bar = $('#train-progress');
  const frac = total ? Math.min(1, done / total) : 0;
  bar.firstElementChild.style.width = `${(frac * 100).toFixed(2)}%`;
  bar.lastElementChild.textContent = `${done} / ${total}`;
  bar.setAttribute('aria-valuenow', String(done));
}

function showStep(m) {
  const total = m.total_steps;
  setProgress(m.step, total);
  $('#st-step').textContent = `${m.step} / ${total}`;
  $('#st-loss').textContent = fmtLoss(m.loss);
  $('#st-norm').textContent = m.grad_norm == null ? '–' : m.grad_norm.toPrecision(3);
  $('#st-lr').textContent = m.lr.toExponential(2);
  // Throughput over the last few steps; the run's first step compiles the GPU kernels, so
  // it is left out once there are others.
  const timed = state.steps.length > 1 ? state.steps.slice(1) : state.steps;
  const recent = timed.slice(-5);
  const ms = recent.reduce((s, x) => s + x.ms, 0);
  const toks = recent.reduce((s, x) => s + x.tokens, 0);
  $('#st-tps').textContent = ms > 0 ? fmtCount(Math.round((toks * 1000) / ms)) : '–';
  $('#st-ms').textContent = fmtMs(m.ms);
  const left = total - m.step;
  $('#st-eta').textContent = left > 0 ? fmtDuration((left * ms) / recent.length) : '0 s';
}

// Exact match: the score before and after, and each held-out item's answers side by side.
function showExact() {
  const { before, after, now } = state.exact;
  const pct = (r) => `${r.correct}/${r.total} (${Math.round(r.score * 100)}%)`;
  const el = $('#exact-summary');
  el.dataset.before = before ? String(before.score) : '';
  el.dataset.after = after ? String(after.score) : '';
  el.textContent = before || after || now
    ? [before && `before training ${pct(before)}`, after && `after ${after.step} steps ${pct(after)}`, now && `now ${pct(now)}`].filter(Boolean).join(' → ')
    : 'Scored before and after training.';
  const rows = (after || now || before) ? (after || now || before).items.map((it, i) => [it.prompt, it.expected, before ? before.items[i].got : '', after ? it.got : now ? it.got : '']) : [];
  $('#exact-table').replaceChildren(rows.length ? table(['Prompt', 'Expected', 'Base model', 'Trained'], rows, (r, c) => (c >= 2 && r[c] !== '' ? (r[c] === r[1] ? 'ok' : 'bad') : '')) : '');
}

function showSamples() {
  const base = state.samples.find((s) => s.step === 0);
  const latest = state.samples.length ? state.samples[state.samples.length - 1] : null;
  if (!state.samplePrompts.length) { $('#samples').replaceChildren(); return; }
  const head = ['Prompt', 'Base model (step 0)', latest && latest !== base ? `Step ${latest.step}` : 'Trained'];
  const rows = state.samplePrompts.slice(0, base ? base.items.length : latest ? latest.items.length : Math.max(0, Math.round(Number(readForm().sample_prompts) || 0))).map((p, i) => [p.label, base ? base.items[i].text : '…', latest && latest !== base ? latest.items[i].text : '']);
  $('#samples').replaceChildren(table(head, rows));
  $('#samples').dataset.rounds = String(state.samples.length);
}

function table(head, rows, cls) {
  const t = document.createElement('table');
  const tr = document.createElement('tr');
  for (const h of head) { const th = document.createElement('th'); th.textContent = h; tr.append(th); }
  t.append(tr);
  for (const r of rows) {
    const row = document.createElement('tr');
    r.forEach((v, c) => {
      const td = document.createElement('td');
      td.textContent = v;
      const k = cls ? cls(r, c) : '';
      if (k) td.className = k;
      row.append(td);
    });
    t.append(row);
  }
  return t;
}

// ---- Chat -----------------------------------------------------------------------------------
function addChat(who, text) {
  const p = document.createElement('p');
  p.className = `msg msg-${who}`;
  p.textContent = text;
  $('#chat-log').append(p);
  $('#chat-log').scrollTop = 1e9;
  return p;
}

function sendChat(e) {
  e.preventDefault();
  const text = $('#chat-input').value.trim();
  if (!text || state.chatBusy) return;
  if (!state.chat.length) $('#chat-log').replaceChildren();
  addChat('user', text);
  addChat('model', '');
  state.chat.push({ role: 'user', content: text });
  $('#chat-input').value = '';
  state.chatBusy = true;
  state.chatPieces = 0;
  refreshButtons();
  const info = state.modelInfo || {};
  // Models without a chat template get the plain text as a prompt.
  const input = info.chat_template ? state.chat.slice() : text;
  send({ type: 'chat', messages: input, opts: { max_new_tokens: Number($('#chat-max').value) || 64, temperature: Number($('#chat-temp').value) || 0, top_p: 0.95, seed: Date.now() % 1e9 } });
}

// ---- Chart: a small canvas line chart (no library) ------------------------------------------
class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.total = 1;
    this.reset();
    new ResizeObserver(() => this.draw()).observe(canvas);
  }
  reset() {
    this.raw = [];
    this.ema = [];
    this.val = [];
    this.draw();
  }
  setTotal(n) {
    this.total = Math.max(1, n);
    this.draw();
  }
  addStep(step, loss) {
    if (!Number.isFinite(loss)) return;
    this.raw.push([step, loss]);
    const prev = this.ema.length ? this.ema[this.ema.length - 1][1] : loss;
    const a = 0.25;
    this.ema.push([step, this.ema.length ? prev + a * (loss - prev) : loss]);
    this.draw();
  }
  // Forget the points after `step` (they are trained again after a recovery).
  truncate(step) {
    const keep = (pts) => pts.filter(([s]) => s <= step);
    this.raw = keep(this.raw);
    this.ema = keep(this.ema);
    this.val = keep(this.val);
    this.draw();
  }
  addVal(step, loss) {
    if (Number.isFinite(loss)) this.val.push([step, loss]);
    this.draw();
  }
  draw() {
    const c = this.canvas;
    c.dataset.points = String(this.raw.length);
    c.dataset.valPoints = String(this.val.length);
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(c);
    const col = (name) => css.getPropertyValue(name).trim();
    const pad = { l: 48, r: 14, t: 12, b: 28 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    const all = this.raw.concat(this.val);
    g.font = '11px system-ui, sans-serif';
    if (!all.length) {
      g.fillStyle = col('--muted');
      g.textAlign = 'center';
      g.fillText('The loss curve appears here when training starts.', w / 2, h / 2);
      return;
    }
    let lo = Math.min(...all.map((p) => p[1]));
    let hi = Math.max(...all.map((p) => p[1]));
    if (hi - lo < 1e-6) { hi += 0.5; lo -= 0.5; }
    const span = hi - lo;
    lo = Math.max(0, lo - span * 0.08);
    hi += span * 0.08;
    const xmax = Math.max(this.total, this.raw.length ? this.raw[this.raw.length - 1][0] : 1);
    const X = (s) => pad.l + (pw * s) / Math.max(1, xmax); // step 0: the base model's validation loss
    const Y = (v) => pad.t + ph * (1 - (v - lo) / (hi - lo));
    // Grid and axes.
    g.strokeStyle = col('--grid');
    g.fillStyle = col('--muted');
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const v of niceTicks(lo, hi, 5)) {
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
      g.fillText(fmtTick(v), pad.l - 6, y);
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (const s of niceTicks(0, xmax, 6).filter((s) => s >= 0 && Number.isInteger(s))) {
      g.fillText(String(s), X(s), h - pad.b + 8);
    }
    g.fillText('step', w - pad.r - 12, h - pad.b + 8 + 0);
    // Series.
    const line = (pts, color, width) => {
      if (!pts.length) return;
      g.strokeStyle = color;
      g.lineWidth = width;
      g.lineJoin = 'round';
      g.beginPath();
      pts.forEach(([s, v], i) => (i ? g.lineTo(X(s), Y(v)) : g.moveTo(X(s), Y(v))));
      g.stroke();
    };
    line(this.raw, col('--raw'), 1);
    line(this.ema, col('--accent'), 2.2);
    g.fillStyle = col('--val');
    for (const [s, v] of this.val) { g.beginPath(); g.arc(X(s), Y(v), 3.5, 0, 2 * Math.PI); g.fill(); }
    line(this.val, col('--val'), 1.2);
    if (this.raw.length === 1) {
      const [s, v] = this.raw[0];
      g.fillStyle = col('--accent');
      g.beginPath(); g.arc(X(s), Y(v), 3, 0, 2 * Math.PI); g.fill();
    }
  }
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}
const fmtTick = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

const chart = new LossChart($('#chart'));

// ---- Formatting -----------------------------------------------------------------------------
function facts(rows) {
  return rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    return [dt, dd];
  });
}
function fmtBytes(b) {
  if (b == null) return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (b >= 1000 && i < u.length - 1) { b /= 1000; i++; }
  return `${b.toFixed(b < 10 && i ? 1 : 0)} ${u[i]}`;
}
function fmtCount(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}
const fmtLoss = (l) => (l == null || !Number.isFinite(l) ? '–' : l.toFixed(4));
const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
function fmtDuration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// ---- Buttons --------------------------------------------------------------------------------
function refreshButtons() {
  const idle = state.training === 'idle';
  const status = $('#train-status');
  const ready = state.modelLoaded && state.dataLoaded && !state.busy;
  const placeholder = ['', 'Ready to train.', 'Load a model and data to start.'].includes(status.textContent);
  if (idle && placeholder) status.textContent = ready ? 'Ready to train.' : 'Load a model and data to start.';
  const canLoad = state.ready && idle && !state.busy && !!modelSource();
  $('#load-model').disabled = !canLoad;
  $('#train').disabled = !(state.ready && idle && ready && state.planOk);
  const done = stepsDone();
  $('#train').textContent = state.plan && done >= state.plan.total_steps && done > 0 ? 'Train again' : done > 0 ? 'Continue' : 'Train';
  $('#pause').disabled = idle;
  $('#pause').textContent = state.training === 'paused' ? 'Resume' : 'Pause';
  $('#stop').disabled = idle;
  for (const e of form.elements) e.disabled = !idle;
  $$('input[name=model], input[name=data]').forEach((e) => { e.disabled = !idle; });
  const loaded = state.ready && state.modelLoaded && !state.busy;
  const info = state.modelInfo || {};
  // Chat and downloads while paused wait for the step in flight, never race it.
  const between = state.training !== 'training';
  $('#chat-send').disabled = !(loaded && info.tokenizer && !state.chatBusy && between);
  $('#chat-input').disabled = !(loaded && info.tokenizer);
  $('#chat-stop').hidden = !state.chatBusy;
  $('#chat-send').title = info.tokenizer === false ? 'this model has no tokenizer' : '';
  for (const b of $$('[data-export]')) {
    const f = b.dataset.export;
    let why = '';
    if (!loaded) why = 'load a model first';
    else if (!between) why = 'pause or stop training first';
    else if (f.startsWith('peft') && info.method !== 'lora') why = 'a PEFT adapter needs LoRA (the Method setting)';
    else if (f === 'merged-zip' && info.source === 'gguf') why = 'this model came as a GGUF: download the merged GGUF instead';
    else if ((f === 'state' || f === 'project') && !(state.dataLoaded && state.planOk)) why = 'load data first';
    b.disabled = !!why;
    b.title = why || b.dataset.title || '';
  }
  $('#state-file').disabled = !(idle && ready);
  const ck = state.savedCheckpoint;
  const matches = ck && state.modelInfo && state.dataInfo && ck.model === state.modelInfo.name && ck.data === state.dataInfo.name && ck.step > 0;
  $('#resume-checkpoint').hidden = !(matches && idle && ready && stepsDone() === 0);
  if (matches) $('#resume-checkpoint').textContent = `Resume the last run from its automatic checkpoint (step ${ck.step})`;
}

// ---- Drag and drop --------------------------------------------------------------------------
async function filesFromDrop(dt) {
  // Folders: walk the entries (Chrome/Edge/Safari/Firefox all offer webkitGetAsEntry).
  const items = Array.from(dt.items || []).map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!items.length) return Array.from(dt.files || []);
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const f = await new Promise((res, rej) => entry.file(res, rej));
      Object.defineProperty(f, 'webkitRelativePath', { value: prefix + f.name });
      out.push(f);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const e of items) await walk(e, '');
  return out;
}

function dropZone(el, onFiles) {
  for (const t of ['dragenter', 'dragover']) el.addEventListener(t, (e) => { e.preventDefault(); el.classList.add('over'); });
  for (const t of ['dragleave', 'drop']) el.addEventListener(t, () => el.classList.remove('over'));
  el.addEventListener('drop', async (e) => {
    e.preventDefault();
    onFiles(await filesFromDrop(e.dataTransfer));
  });
}

// ---- Wiring ---------------------------------------------------------------------------------
function wire() {
  $$('input[name=model]').forEach((e) => e.addEventListener('change', onModelChoice));
  $$('input[name=data]').forEach((e) => e.addEventListener('change', onDataChoice));
  $('#load-model').addEventListener('click', loadModel);
  for (const sel of ['#hub-id', '#hub-endpoint', '#hub-revision']) $(sel).addEventListener('input', () => { savePage(); refreshButtons(); });
  $('#hub-id').addEventListener('keydown', (e) => { if (e.key === 'Enter') loadModel(); });
  $('#model-files').addEventListener('change', (e) => takeModelFiles(e.target.files));
  $('#model-folder').addEventListener('change', (e) => takeModelFiles(e.target.files));
  $('#data-file').addEventListener('change', (e) => { takeDataFile(e.target.files[0]); e.target.value = ''; });
  $('#eval-file').addEventListener('change', (e) => { takeEvalFile(e.target.files[0]); e.target.value = ''; });
  $('#eval-clear').addEventListener('click', () => takeEvalFile(null));
  dropZone($('#local-drop'), (files) => takeModelFiles(files));
  dropZone($('#data-drop'), (files) => takeDataFile(files[0]));
  // Dropping anywhere on a panel works too.
  dropZone($('#model-panel'), (files) => takeModelFiles(files));
  dropZone($('#data-panel'), (files) => takeDataFile(files[0]));
  $('#mask-prev').addEventListener('click', () => previewStep(-1));
  $('#mask-next').addEventListener('click', () => previewStep(1));
  form.addEventListener('input', configure);
  form.addEventListener('change', () => { showLossHint(); configure(); });
  form.addEventListener('submit', (e) => e.preventDefault());
  $('#reset-settings').addEventListener('click', () => { writeForm(DEFAULTS); showLossHint(); configure(); });
  $('#train').addEventListener('click', startTraining);
  $('#pause').addEventListener('click', () => send({ type: state.training === 'paused' ? 'resume' : 'pause' }));
  $('#stop').addEventListener('click', () => send({ type: 'stop' }));
  $('#state-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    e.target.value = '';
    if (!f) return;
    const bytes = await f.arrayBuffer();
    setStatus('#train-status', `Reading ${f.name}…`);
    send({ type: 'restore', bytes, name: f.name }, [bytes]);
  });
  $('#resume-checkpoint').addEventListener('click', () => send({ type: 'resume-checkpoint' }));
  $('#chat-form').addEventListener('submit', sendChat);
  $('#chat-stop').addEventListener('click', () => send({ type: 'chat-stop' }));
  $('#chat-clear').addEventListener('click', () => { state.chat = []; $('#chat-log').replaceChildren(); });
  for (const sel of ['#chat-max', '#chat-temp']) $(sel).addEventListener('change', savePage);
  $$('[data-export]').forEach((b) => {
    b.dataset.title = b.title;
    b.addEventListener('click', () => send({ type: 'export', format: b.dataset.export, ggufType: $('#gguf-type').value }));
  });
  window.addEventListener('error', (e) => showError('page', e.message));
  window.addEventListener('unhandledrejection', (e) => showError('page', (e.reason && e.reason.message) || String(e.reason)));
}

wire();
writeForm(loadJSON(SETTINGS_KEY) || {});
loadPage();
showLossHint();
onModelChoice();
$('#data-drop').hidden = selectedData() !== 'upload';
refreshButtons();

// Say so at once when the page itself has no WebGPU (the worker confirms the adapter).
if (!navigator.gpu) {
  showNoWebGPU('navigator.gpu is not defined in this browser (WebGPU is off or unsupported).');
} else {
  send({ type: 'init' });
}
