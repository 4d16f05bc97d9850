// webtune page: the UI. The engine (wasm + GPU) lives in worker.js; this file only sends
// it messages and draws what comes back, so the page never freezes during training.

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));

// ---- Catalog --------------------------------------------------------------------------------
// The engine demo works today. HOOK(gguf)+HOOK(tokenizer): when both land (the worker's
// `caps.gguf && caps.tokenizer`), SmolLM2 becomes the preselected default: flip
// DEFAULT_MODEL to 'smollm2' and add its demo dataset (a text JSONL) to DATASETS.
const MODELS = {
  demo: { kind: 'url-hf', name: 'engine demo (tiny Llama)', base: 'demo/', files: ['config.json', 'model.safetensors'] },
  // scripts/serve.sh links the file fetched by scripts/fetch-model.sh here.
  smollm2: { kind: 'url-gguf', name: 'SmolLM2-135M-Instruct.Q4_1.gguf', url: 'models/SmolLM2-135M-Instruct.Q4_1.gguf' },
};
const DEFAULT_MODEL = 'demo';
const DATASETS = {
  demo: { name: 'count.jsonl', url: 'demo/count.jsonl' },
};

// ---- Settings (persisted) -------------------------------------------------------------------
const SETTINGS_KEY = 'webtune.settings.v1';
const form = $('#settings');
const DEFAULTS = Object.fromEntries(
  Array.from(form.elements).filter((e) => e.name).map((e) => [e.name, e.type === 'radio' ? (e.checked ? e.value : undefined) : e.value])
    .filter(([, v]) => v !== undefined),
);

function readForm() {
  const out = {};
  for (const e of form.elements) {
    if (!e.name) continue;
    if (e.type === 'radio') { if (e.checked) out[e.name] = e.value; } else out[e.name] = e.value;
  }
  return out;
}

function writeForm(values) {
  for (const e of form.elements) {
    if (!e.name || !(e.name in values)) continue;
    if (e.type === 'radio') e.checked = e.value === values[e.name] && !e.disabled;
    else e.value = values[e.name];
  }
}

function loadSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || 'null');
    if (saved && typeof saved === 'object') writeForm(saved);
  } catch { /* a broken entry: keep the defaults */ }
}

function saveSettings() {
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(readForm())); } catch { /* private mode */ }
}

// The form's values as the engine's `configure` keys.
function engineSettings() {
  const f = readForm();
  const micro = Math.max(1, Math.round(Number(f.batch) || 1));
  const accum = Math.max(1, Math.round(Number(f.accum) || 1));
  const s = {
    loss: f.loss,
    lr: Number(f.lr),
    schedule: f.schedule,
    warmup: Math.round(Number(f.warmup) || 0),
    batch: micro * accum,
    micro_batch: micro,
    max_len: Math.round(Number(f.max_len)),
    max_grad_norm: Number(f.max_grad_norm),
    weight_decay: Number(f.weight_decay),
    seed: Math.round(Number(f.seed) || 0),
    val_share: Number(f.val_share),
    eval_every: Math.round(Number(f.eval_every) || 0),
  };
  if (f.length_unit === 'epochs') s.epochs = Number(f.length);
  else s.steps = Math.max(1, Math.round(Number(f.length) || 1));
  return s;
}

// ---- Worker -------------------------------------------------------------------------------
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const send = (msg) => worker.postMessage(msg);

const state = {
  ready: false,
  modelLoaded: false,
  dataLoaded: false,
  training: 'idle', // idle | training | paused
  busy: false, // a model or data load in flight
  plan: null,
  steps: [], // {step, loss, ms, tokens}
  evals: [], // {step, loss}
  startedAt: 0,
  localFiles: null, // {name, files: {name: File}}
  caps: {},
};
// For tests and the console.
window.webtune = { state };

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
    const a = m.adapter;
    const w = m.webgpu || {};
    // Browsers hide the adapter's name; vendor and architecture are what they tell.
    const name = a.name || [w.vendor, w.architecture].filter(Boolean).join(' ') || 'GPU';
    setBadge('ok', `WebGPU · ${name}${a.software ? ' (software)' : ''}`);
    $('#gpu-badge').title = `WebGPU adapter: ${name}${w.description ? ` (${w.description})` : ''}, ${a.device_type}; largest buffer ${fmtBytes(a.max_binding_bytes)}; matmul kernel ${a.matmul}`;
    $('#engine-version').textContent = `webtune ${state.caps.version || ''}`;
    applyCaps();
    refreshButtons();
    // Start with the preselected model and dataset.
    if (selectedModel() !== 'local' && selectedModel() !== 'hub' && modelAvailable(selectedModel())) loadModel();
  },
  'no-webgpu'(m) {
    showNoWebGPU(m.detail);
  },
  status(m) {
    setStatus('#model-status', m.text);
    const bar = $('#model-progress');
    if (typeof m.progress === 'number') {
      bar.hidden = false;
      bar.firstElementChild.style.width = `${(m.progress * 100).toFixed(1)}%`;
    }
  },
  model(m) {
    state.busy = false;
    state.modelLoaded = true;
    $('#model-progress').hidden = true;
    $('#model-error').hidden = true;
    setStatus('#model-status', `Loaded in ${fmtMs(m.ms)}`, 'ok');
    showModelInfo(m.info);
    resetRun();
    configure();
    if (!state.dataLoaded) loadData();
    refreshButtons();
  },
  data(m) {
    state.busy = false;
    state.dataLoaded = true;
    $('#data-error').hidden = true;
    setStatus('#data-status', `${m.info.name}: ${m.info.examples} examples`, 'ok');
    showDataInfo(m.info);
    showPreview(m.preview);
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
  plan(m) {
    state.plan = m.plan;
    showPlan(m.plan, m.data);
    if (m.data && m.data.examples) showDataInfo(m.data);
    if (m.info) showModelInfo(m.info);
    refreshButtons();
    if (state.autoStart && state.modelLoaded && state.dataLoaded) {
      state.autoStart = false;
      startTraining();
    }
  },
  state(m) {
    state.training = m.state;
    const label = { training: 'Training…', paused: 'Paused', idle: '' }[m.state];
    if (label) setStatus('#train-status', label);
    refreshButtons();
  },
  step(m) {
    state.steps.push(m);
    chart.addStep(m.step, m.loss);
    showStep(m);
  },
  eval(m) {
    state.evals.push({ step: m.step, loss: m.loss });
    chart.addVal(m.step, m.loss);
    $('#st-val').textContent = fmtLoss(m.loss);
    $('#st-val').title = `${m.split} loss over ${m.examples} examples`;
  },
  done(m) {
    const text = { finished: `Done: ${m.step} steps.`, stopped: `Stopped at step ${m.step}.`, error: `Stopped by an error at step ${m.step}.` }[m.reason];
    setStatus('#train-status', text, m.reason === 'error' ? 'err' : 'ok');
    if (m.reason === 'finished') $('#st-eta').textContent = '0 s';
  },
  error(m) {
    state.busy = false;
    if (m.where === 'model') {
      $('#model-progress').hidden = true;
      setStatus('#model-status', '');
      const el = $('#model-error');
      el.textContent = m.message;
      el.hidden = false;
    } else if (m.where === 'chat') {
      addChat('note', m.message);
    } else if (m.where === 'export') {
      $('#export-status').textContent = m.message;
    }
    if (m.where !== 'chat' && m.where !== 'export') showError(m.where, m.message);
    refreshButtons();
  },
  'chat-reply'(m) {
    addChat('model', m.text);
  },
  download(m) {
    const blob = new Blob([m.bytes], { type: m.mime || 'application/octet-stream' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = m.name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
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

const WHERE = { init: 'Starting the engine', model: 'Model', data: 'Data', settings: 'Settings', train: 'Training', score: 'Evaluation', worker: 'Engine', page: 'Page' };
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

function modelAvailable(id) {
  if (id === 'smollm2') return !!(state.caps.gguf && state.caps.tokenizer);
  return true;
}

function applyCaps() {
  const ok = modelAvailable('smollm2');
  $('#smollm2-tag').textContent = ok ? 'default' : 'coming';
  $('#smollm2-tag').classList.toggle('tag-muted', !ok);
  $('#choice-smollm2 input').disabled = !ok;
  $('#choice-smollm2').classList.toggle('disabled', !ok);
  const lora = $('input[name=method][value=lora]');
  lora.disabled = !state.caps.lora;
  $$('[data-export]').forEach((b) => { b.disabled = !state.caps.export || (b.dataset.export === 'peft' && !state.caps.lora); });
  $('#chat-send').disabled = !state.caps.generate;
  $('#chat-input').disabled = !state.caps.generate;
}

function onModelChoice() {
  const v = selectedModel();
  $('#local-drop').hidden = v !== 'local';
  $('#hub-row').hidden = v !== 'hub';
  refreshButtons();
}

function loadModel() {
  if (!state.ready || state.training !== 'idle') return;
  const v = selectedModel();
  let source;
  if (v === 'local') {
    if (!state.localFiles) return;
    source = { kind: 'files', name: state.localFiles.name, files: state.localFiles.files };
  } else if (v === 'hub') {
    const id = $('#hub-id').value.trim();
    if (!id) { $('#hub-id').focus(); return; }
    source = { kind: 'hub', id };
  } else {
    source = MODELS[v];
  }
  state.busy = true;
  $('#model-error').hidden = true;
  $('#model-info').hidden = true;
  setStatus('#model-status', 'Loading…');
  refreshButtons();
  if (source.kind === 'files') {
    // Read the files here; the buffers move to the worker without a copy.
    Promise.all(Object.entries(source.files).map(async ([n, f]) => [n, await f.arrayBuffer()]))
      .then((entries) => {
        const files = Object.fromEntries(entries);
        worker.postMessage({ type: 'load-model', source: { ...source, files } }, entries.map(([, b]) => b));
      })
      .catch((e) => handlers.error({ where: 'model', message: `could not read the files: ${e.message}` }));
  } else {
    send({ type: 'load-model', source });
  }
}

function takeModelFiles(fileList) {
  const files = {};
  let folder = '';
  for (const f of fileList) {
    const path = f.webkitRelativePath || f.name;
    if (!folder && path.includes('/')) folder = path.split('/')[0];
    const base = path.split('/').pop();
    if (base === 'config.json' || base.endsWith('.safetensors') || base.endsWith('.gguf') || base.endsWith('.json')) files[base] = f;
  }
  const names = Object.keys(files);
  if (!names.length) {
    handlers.error({ where: 'model', message: 'none of those files is a model file (config.json, *.safetensors or *.gguf)' });
    return;
  }
  const gguf = names.find((n) => n.endsWith('.gguf'));
  state.localFiles = { name: gguf || folder || names.find((n) => n.endsWith('.safetensors')) || 'local model', files };
  const size = Object.values(files).reduce((s, f) => s + f.size, 0);
  $('#local-files-list').textContent = `${names.join(', ')} (${fmtBytes(size)})`;
  $('input[name=model][value=local]').checked = true;
  onModelChoice();
}

function showModelInfo(i) {
  const dl = $('#model-info');
  dl.hidden = false;
  dl.replaceChildren(
    ...facts([
      ['Model', i.name],
      ['Architecture', `${i.arch}, ${i.layers} layers, hidden ${i.hidden}, ${i.heads}/${i.kv_heads} heads`],
      ['Parameters', `${fmtCount(i.params)} (${fmtCount(i.trainable)} trained)`],
      ['Vocabulary', `${i.vocab} tokens, up to ${i.max_seq} positions`],
      ['GPU memory (est.)', `${fmtBytes(i.gpu_bytes)}: weights + grads + AdamW ${fmtBytes(i.param_bytes)}, activations ${fmtBytes(i.activation_bytes)}`],
    ]),
  );
}

// ---- Data panel -----------------------------------------------------------------------------
const selectedData = () => $('input[name=data]:checked').value;
let uploaded = null; // {name, text}

function loadData() {
  if (!state.ready || state.training !== 'idle') return;
  $('#data-error').hidden = true;
  if (selectedData() === 'upload') {
    if (!uploaded) return;
    send({ type: 'set-data', name: uploaded.name, text: uploaded.text });
  } else {
    const d = DATASETS[selectedData()];
    send({ type: 'set-data', name: d.name, url: new URL(d.url, location.href).href });
  }
  state.busy = true;
  setStatus('#data-status', 'Reading…');
  refreshButtons();
}

async function takeDataFile(file) {
  if (!file) return;
  try {
    uploaded = { name: file.name, text: await file.text() };
  } catch (e) {
    showDataError({ name: file.name, message: `could not read ${file.name}: ${e.message}` });
    return;
  }
  $('input[name=data][value=upload]').checked = true;
  onDataChoice();
  loadData();
}

function onDataChoice() {
  $('#data-drop').hidden = selectedData() !== 'upload';
  if (selectedData() !== 'upload' || uploaded) loadData();
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
  $('#mask-preview').replaceChildren();
}

function showDataInfo(i) {
  const dl = $('#data-info');
  dl.hidden = false;
  dl.replaceChildren(
    ...facts([
      ['Examples', `${i.examples} (${i.train} train, ${i.val} validation)`],
      ['Tokens', `${fmtCount(i.tokens)}, ${fmtCount(i.trained_tokens)} trained; longest ${i.longest}`],
      ...(i.truncated ? [['Truncated', `${i.truncated} examples longer than the max length`]] : []),
    ]),
  );
}

function showPreview(items) {
  const box = $('#mask-preview');
  box.replaceChildren();
  $('#mask-head').hidden = !items.length;
  for (const ex of items) {
    const row = document.createElement('div');
    row.className = 'mask-row';
    const origin = document.createElement('span');
    origin.className = 'origin';
    origin.textContent = ex.origin.split(':').pop();
    origin.title = ex.origin;
    row.append(origin);
    // HOOK(tokenizer): show each token's text (ex.text[i]) instead of its id.
    ex.ids.forEach((id, i) => {
      const t = document.createElement('i');
      t.className = `tok ${ex.trained[i] ? 'tok-trained' : 'tok-prompt'}`;
      t.textContent = id;
      row.append(t);
    });
    box.append(row);
  }
}

// ---- Settings -------------------------------------------------------------------------------
let configureTimer = 0;
function configure() {
  clearTimeout(configureTimer);
  configureTimer = setTimeout(() => {
    saveSettings();
    if (state.ready && state.training === 'idle') send({ type: 'configure', settings: engineSettings() });
  }, 150);
}

const LOSS_HINTS = {
  'per-example': 'Mean over examples of each answer\'s mean token loss: short and long answers weigh the same.',
  'per-token': 'Mean over all answer tokens of the batch: long answers weigh more.',
  'all-tokens': 'Every next-token prediction counts, prompt included (continued pre-training).',
};
function showLossHint() {
  $('#loss-hint').textContent = LOSS_HINTS[form.elements.loss.value] || '';
}

function showPlan(p, data) {
  const acc = p.accumulation > 1 ? ` (${p.micro_batch} per pass × ${p.accumulation} accumulated)` : '';
  const ep = data && data.train ? `, ${p.epochs.toFixed(p.epochs < 10 ? 2 : 1)} epochs of ${data.train} examples` : '';
  $('#plan-text').textContent = `Plan: ${p.total_steps} steps of ${p.batch} examples${acc}${ep}; ${p.loss} loss, lr ${p.lr} ${p.schedule}${p.warmup ? ` after ${p.warmup} warm-up steps` : ''}.`;
  const done = state.steps.length ? state.steps[state.steps.length - 1].step : 0;
  setProgress(done, p.total_steps);
  chart.setTotal(p.total_steps);
}

// ---- Training -------------------------------------------------------------------------------
function resetRun() {
  if (state.training === 'idle') setStatus('#train-status', '');
  state.steps = [];
  state.evals = [];
  chart.reset();
  for (const id of ['step', 'loss', 'val', 'norm', 'tps', 'ms', 'lr', 'eta']) $(`#st-${id}`).textContent = '–';
  setProgress(0, state.plan ? state.plan.total_steps : 1);
}

function startTraining() {
  if (state.training !== 'idle') return;
  const done = state.steps.length ? state.steps[state.steps.length - 1].step : 0;
  if (state.plan && done >= state.plan.total_steps) {
    // A finished run: training again starts from the model's original weights.
    state.autoStart = true;
    loadModel();
    return;
  }
  state.startedAt = performance.now();
  setStatus('#train-status', done ? 'Continuing…' : 'Starting… (the first step compiles the GPU kernels)');
  send({ type: 'train' });
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
    const X = (s) => pad.l + (pw * (s - 1)) / Math.max(1, xmax - 1);
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
    for (const s of niceTicks(1, xmax, 6).filter((s) => s >= 1 && Number.isInteger(s))) {
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

// ---- Results (placeholders wired to the worker) --------------------------------------------
function addChat(who, text) {
  const p = document.createElement('p');
  p.className = `msg msg-${who}`;
  p.textContent = text;
  $('#chat-log').append(p);
  $('#chat-log').scrollTop = 1e9;
}

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
  const v = selectedModel();
  const canLoad = state.ready && idle && !state.busy &&
    (v === 'local' ? !!state.localFiles : v === 'hub' ? !!$('#hub-id').value.trim() : modelAvailable(v));
  $('#load-model').disabled = !canLoad;
  $('#train').disabled = !(state.ready && idle && !state.busy && state.modelLoaded && state.dataLoaded);
  const done = state.steps.length ? state.steps[state.steps.length - 1].step : 0;
  $('#train').textContent = state.plan && done >= state.plan.total_steps && done > 0 ? 'Train again' : done > 0 ? 'Continue' : 'Train';
  $('#pause').disabled = idle;
  $('#pause').textContent = state.training === 'paused' ? 'Resume' : 'Pause';
  $('#stop').disabled = idle;
  for (const e of form.elements) if (e.name !== 'method' || e.value === 'full') e.disabled = !idle;
  $$('input[name=model], input[name=data]').forEach((e) => { if (!(e.value === 'smollm2' && !modelAvailable('smollm2'))) e.disabled = !idle; });
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
loadSettings();
$$('input[name=model]').forEach((e) => e.addEventListener('change', onModelChoice));
$$('input[name=data]').forEach((e) => e.addEventListener('change', onDataChoice));
$('#load-model').addEventListener('click', loadModel);
$('#hub-id').addEventListener('input', refreshButtons);
$('#hub-id').addEventListener('keydown', (e) => { if (e.key === 'Enter') loadModel(); });
$('#model-files').addEventListener('change', (e) => takeModelFiles(e.target.files));
$('#model-folder').addEventListener('change', (e) => takeModelFiles(e.target.files));
$('#data-file').addEventListener('change', (e) => takeDataFile(e.target.files[0]));
dropZone($('#local-drop'), (files) => takeModelFiles(files));
dropZone($('#data-drop'), (files) => takeDataFile(files[0]));
// Dropping anywhere on a panel works too.
dropZone($('#model-panel'), (files) => takeModelFiles(files));
dropZone($('#data-panel'), (files) => takeDataFile(files[0]));
form.addEventListener('input', configure);
form.elements.loss.addEventListener('change', showLossHint);
form.addEventListener('change', configure);
form.addEventListener('submit', (e) => e.preventDefault());
$('#reset-settings').addEventListener('click', () => { writeForm(DEFAULTS); configure(); });
$('#train').addEventListener('click', startTraining);
$('#pause').addEventListener('click', () => send({ type: state.training === 'paused' ? 'resume' : 'pause' }));
$('#stop').addEventListener('click', () => send({ type: 'stop' }));
$('#chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('#chat-input').value.trim();
  if (!text) return;
  addChat('user', text);
  $('#chat-input').value = '';
  send({ type: 'chat', prompt: text });
});
$$('[data-export]').forEach((b) => b.addEventListener('click', () => send({ type: 'export', format: b.dataset.export })));
window.addEventListener('error', (e) => showError('page', e.message));
window.addEventListener('unhandledrejection', (e) => showError('page', (e.reason && e.reason.message) || String(e.reason)));

$(`input[name=model][value=${DEFAULT_MODEL}]`).checked = true;
showLossHint();
onModelChoice();
onDataChoice();
applyCaps();
refreshButtons();

// Say so at once when the page itself has no WebGPU (the worker confirms the adapter).
if (!navigator.gpu) {
  showNoWebGPU('navigator.gpu is not defined in this browser (WebGPU is off or unsupported).');
} else {
  send({ type: 'init' });
}
