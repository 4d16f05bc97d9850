// The page in headless Chromium (WebGPU on SwiftShader, a CPU emulation): SmolLM2-135M
// fine-tuned with LoRA on the sentiment demo end to end (train, chat, PEFT adapter, reload
// and resume from the saved state); a model loaded by id from a stand-in hub, then from the
// browser's cache; recovery from a lost GPU device; the no-WebGPU message; an invalid JSONL
// shown inline with its line number.
//
// Needs www/pkg built (scripts/test.sh phase 4 or scripts/serve.sh), the default model in
// models/ (scripts/fetch-model.sh; linked into www/models/ here when missing) and
// /usr/bin/chromium (override with CHROMIUM). Screenshots go to artifacts/ at the
// repository root. SwiftShader is slow, so the SmolLM2 run is a few short steps.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve, serveHub } from './server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WWW = path.join(ROOT, 'www');
const ARTIFACTS = path.join(ROOT, 'artifacts');
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const MODEL = 'SmolLM2-135M-Instruct.Q4_1.gguf';
// The same flags as webdriver.json (the wasm-bindgen tests' browser).
const QUIET = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const WEBGPU = ['--enable-unsafe-webgpu'];
const MIN = 60_000;

let server;
fs.mkdirSync(ARTIFACTS, { recursive: true });

before(async () => {
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'webtune_bg.wasm')), 'www/pkg is not built: run scripts/serve.sh or scripts/test.sh');
  // scripts/serve.sh links the default model; do the same when only the tests ran.
  const link = path.join(WWW, 'models', MODEL);
  if (!fs.existsSync(link) && fs.existsSync(path.join(ROOT, 'models', MODEL))) {
    fs.mkdirSync(path.dirname(link), { recursive: true });
    fs.rmSync(link, { force: true });
    fs.symlinkSync(path.join('..', '..', 'models', MODEL), link);
  }
  server = await serve(WWW);
});
after(async () => server && server.close());

// A browser and a page; `page.choose` (model/data choices) is stored before the page runs,
// as a person's earlier visit would have left it.
async function open(args, { choose = null, query = '' } = {}) {
  const browser = await chromium.launch({ executablePath: EXECUTABLE, headless: true, args });
  const context = await browser.newContext({ viewport: { width: 1360, height: 1100 }, deviceScaleFactor: 1, acceptDownloads: true });
  if (choose) await context.addInitScript((v) => { if (!localStorage.getItem('webtune.page.v2')) localStorage.setItem('webtune.page.v2', v); }, JSON.stringify(choose));
  const page = await context.newPage();
  const log = [];
  page.on('console', (m) => log.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => log.push(`[pageerror] ${e.message}`));
  page.on('worker', (w) => w.on('console', (m) => log.push(`[worker.${m.type()}] ${m.text()}`)));
  await page.goto(server.url + query);
  return { browser, page, log };
}

// Run `fn`; on failure, print what the page logged and save a screenshot.
async function withPage(name, args, opts, fn) {
  const { browser, page, log } = await open(args, opts);
  try {
    await fn(page);
  } catch (e) {
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}-failure.png`), fullPage: true }).catch(() => {});
    const errs = await page.locator('#errors').innerText().catch(() => '');
    console.error(`--- ${name}: page errors ---\n${errs}\n--- ${name}: browser log ---\n${log.join('\n')}`);
    throw e;
  } finally {
    await browser.close();
  }
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
const pageErrors = (page) => page.locator('#errors').innerText();
// Wait for fn(arg) in the page; an error shown on the page (#errors) ends the wait at once
// instead of after the whole timeout, with the error as the failure.
async function until(page, fn, arg, timeout) {
  const done = await page.waitForFunction(
    ([src, a]) => {
      const errs = document.querySelector('#errors')?.textContent.trim();
      // eslint-disable-next-line no-new-func
      return new Function('a', `return (${src})(a)`)(a) ? 'ok' : errs ? `error: ${errs}` : false;
    },
    [fn.toString(), arg],
    { timeout, polling: 250 },
  );
  const why = await done.jsonValue();
  if (why !== 'ok') throw new Error(`the page showed an error while waiting for ${fn}: ${why}`);
}

async function setSettings(page, values) {
  for (const [name, v] of Object.entries(values)) {
    const radio = page.locator(`#settings input[type=radio][name=${name}]`);
    if (await radio.count()) {
      await page.check(`#settings input[type=radio][name=${name}][value="${v}"]`, { force: true });
      continue;
    }
    const el = page.locator(`#settings [name=${name}]`);
    if ((await el.evaluate((e) => e.tagName)) === 'SELECT') await el.selectOption(String(v));
    else await el.fill(String(v));
  }
}

// A download triggered by `click`, saved under artifacts/.
async function download(page, click, name) {
  const [d] = await Promise.all([page.waitForEvent('download', { timeout: 5 * MIN }), click()]);
  const file = path.join(ARTIFACTS, name || d.suggestedFilename());
  await d.saveAs(file);
  return file;
}

// The entries of a STORE zip (what the page writes): {name: Buffer}.
function unzip(buf) {
  const out = {};
  for (let at = 0; buf.readUInt32LE(at) === 0x04034b50;) {
    const size = buf.readUInt32LE(at + 18);
    const nameLen = buf.readUInt16LE(at + 26);
    const extra = buf.readUInt16LE(at + 28);
    const name = buf.subarray(at + 30, at + 30 + nameLen).toString();
    const start = at + 30 + nameLen + extra;
    out[name] = buf.subarray(start, start + size);
    at = start + size;
  }
  return out;
}

function safetensorsHeader(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return JSON.parse(buf.subarray(8, 8 + n).toString());
}

// SmolLM2 on SwiftShader: a few short steps at a high learning rate, so the loss falls
// visibly within minutes.
const RUN = {
  method: 'lora', lora_rank: 8, lora_alpha: 16, length: 4, length_unit: 'steps', batch: 1, accum: 1, max_len: 64,
  lr: 0.002, warmup: 0, schedule: 'constant', eval_every: 2, val_limit: 2, eval_items: 2, sample_prompts: 1,
  sample_every: 0, sample_tokens: 4, checkpoint_every: 0,
  // The base stays as the GGUF has it (base 'auto'): LoRA trains over the compact Q4_1 and
  // Q8_0 blocks, which the kernels decode (the CPU kernels' vec4 and block-wise Q4_1 reads
  // brought a step over them near the f32 base's on SwiftShader). The GPT-2 test below
  // reloads a model through the base select.
  base: 'auto',
};

test('SmolLM2: LoRA on the sentiment demo, chat, PEFT adapter, reload and resume', { timeout: 30 * MIN }, async () => {
  await withPage('smollm2', [...WEBGPU, ...QUIET], {}, async (page) => {
    const t0 = Date.now();
    await page.waitForSelector('#gpu-badge[data-state=ok]', { timeout: MIN });
    // The default model and the sentiment demo load by themselves.
    await until(page, () => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded, null, 5 * MIN);
    const loadMs = Date.now() - t0;
    const info = await page.locator('#model-info').innerText();
    assert.match(info, /SmolLM2-135M-Instruct/);
    assert.match(info, /Llama, 30 layers, hidden 576/);
    assert.match(info, /GPU memory/);
    // LoRA over the default GGUF keeps its base compact on the GPU (the Q4_1 blocks and the
    // Q8_0 embedding, read by the kernels); the page says so.
    assert.match(info, /Weights on the GPU\s*(?=[^\n]*Q4_1 x \d+)(?=[^\n]*Q8_0 x 1\b)/);
    // The mask preview: token text, trained tokens, and the next example.
    assert.ok((await page.locator('#mask-preview .tok-trained').count()) > 0, 'the mask preview shows trained tokens');
    assert.match(await page.locator('#mask-preview').innerText(), /positive|negative/);
    await page.click('#mask-next');
    await until(page, () => /^Example 2 of 64/.test(document.querySelector('#mask-where').textContent), null, 30_000);

    await setSettings(page, RUN);
    await until(page, () => {
      const p = window.webtune.state.plan;
      return p && p.total_steps === 4 && p.batch === 1 && p.max_len === 64 && !window.webtune.state.busy;
    }, null, 3 * MIN);
    assert.match(await page.locator('#model-info').innerText(), /LoRA r=8/);
    await shot(page, 'before');

    await page.click('#train');
    await until(page, () => Number(document.querySelector('#chart').dataset.points) >= 2, null, 12 * MIN);
    // Pause holds the loop between steps; the state saved here is what we resume from.
    await page.click('#pause');
    await until(page, () => window.webtune.state.training === 'paused', null, 4 * MIN);
    await shot(page, 'during');
    const held = await page.evaluate(() => window.webtune.state.steps.length);
    const stateFile = await download(page, () => page.click('[data-export=state]'), 'paused.state');
    assert.equal(await page.evaluate(() => window.webtune.state.steps.length), held, 'no steps while paused');
    assert.equal(await page.locator('#pause').innerText(), 'Resume');
    await page.click('#pause');
    await until(page, () => window.webtune.state.lastDone && window.webtune.state.training === 'idle', null, 12 * MIN);
    await shot(page, 'after');

    const run = await page.evaluate(() => ({
      steps: window.webtune.state.steps.map((s) => ({ step: s.step, loss: s.loss, ms: s.ms, tokens: s.tokens })),
      evals: window.webtune.state.evals,
      exact: window.webtune.state.exact,
      samples: window.webtune.state.samples,
      done: window.webtune.state.lastDone,
      points: Number(document.querySelector('#chart').dataset.points),
      progress: document.querySelector('#train-progress span').textContent,
    }));
    assert.equal((await pageErrors(page)).trim(), '', 'no errors on the page');
    assert.equal(run.done.reason, 'finished');
    assert.deepEqual(run.steps.map((s) => s.step), [1, 2, 3, 4]);
    assert.equal(run.points, 4);
    assert.equal(run.progress, '4 / 4');
    assert.ok(run.evals.length >= 1, `validation losses on the chart: ${JSON.stringify(run.evals)}`);
    assert.ok(run.exact.before && run.exact.after, 'exact match before and after');
    assert.equal(run.exact.after.total, RUN.eval_items);
    assert.ok(run.samples.length >= 2 && run.samples[0].step === 0, 'samples of the base model and the trained one');
    // Batches of one example make the step losses noisy: the validation loss on the same
    // held-out examples is what must fall, from the base model (step 0) to the end.
    const v0 = run.evals.find((e) => e.step === 0);
    const vEnd = run.evals.find((e) => e.step === 4);
    assert.ok(v0 && vEnd, `validation at steps 0 and 4: ${JSON.stringify(run.evals)}`);
    assert.ok(vEnd.loss < v0.loss, `the validation loss falls: step 0 ${v0.loss}, step 4 ${vEnd.loss}`);
    const timed = run.steps.slice(1);
    const tps = (timed.reduce((a, s) => a + s.tokens, 0) * 1000) / timed.reduce((a, s) => a + s.ms, 0);

    // Chat with the trained model: the reply streams in.
    await page.fill('#chat-input', 'Is this review positive or negative? Answer with one word.\nReview: I loved every minute of it.');
    await page.fill('#chat-max', '6');
    await page.click('#chat-send');
    await until(page, () => !window.webtune.state.chatBusy && window.webtune.state.chat.length === 2, null, 3 * MIN);
    const reply = await page.evaluate(() => ({ text: window.webtune.state.chat[1].content, pieces: window.webtune.state.chatPieces }));
    assert.ok(reply.text.trim().length > 0 && reply.pieces >= 1, `a streamed reply: ${JSON.stringify(reply)}`);

    // The PEFT adapter: a zip of adapter_config.json and adapter_model.safetensors.
    const zip = unzip(fs.readFileSync(await download(page, () => page.click('[data-export=peft-zip]'))));
    assert.deepEqual(Object.keys(zip).sort(), ['adapter_config.json', 'adapter_model.safetensors']);
    const cfg = JSON.parse(zip['adapter_config.json'].toString());
    assert.equal(cfg.peft_type, 'LORA');
    assert.equal(cfg.r, 8);
    assert.equal(cfg.lora_alpha, 16);
    assert.deepEqual([...cfg.target_modules].sort(), ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    const keys = Object.keys(safetensorsHeader(zip['adapter_model.safetensors'])).filter((k) => k !== '__metadata__');
    for (const k of ['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.29.mlp.down_proj.lora_B.weight']) {
      assert.ok(keys.includes(k), `${k} in the adapter (${keys.length} tensors)`);
    }
    assert.equal(keys.length, 30 * 7 * 2);
    assert.equal((await pageErrors(page)).trim(), '', 'no errors on the page');

    // Reload: the settings survive, the model and data load again, and the saved state
    // resumes the run where the pause left it, with the same losses as the first time.
    const pausedAt = (await page.evaluate(() => window.webtune.state.checkpoints.length)) || 0;
    await page.reload();
    await until(page, () => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded && window.webtune.state.plan && !window.webtune.state.busy, null, 5 * MIN);
    assert.equal(await page.inputValue('#settings [name=length]'), '4');
    assert.equal(await page.inputValue('#settings [name=max_len]'), '64');
    await page.setInputFiles('#state-file', stateFile);
    await until(page, () => window.webtune.state.restoredAt > 0, null, 2 * MIN);
    const restored = await page.evaluate(() => window.webtune.state.restoredAt);
    assert.equal(restored, held, 'the state resumes at the step it was saved');
    await page.click('#train');
    await until(page, () => window.webtune.state.lastDone && window.webtune.state.training === 'idle', null, 12 * MIN);
    const resumed = await page.evaluate(() => window.webtune.state.steps.map((s) => ({ step: s.step, loss: s.loss })));
    assert.deepEqual(resumed.map((s) => s.step), run.steps.filter((s) => s.step > held).map((s) => s.step));
    for (const s of resumed) {
      const orig = run.steps.find((o) => o.step === s.step).loss;
      assert.ok(Math.abs(s.loss - orig) < 1e-3 * Math.max(1, orig), `step ${s.step} resumed: loss ${s.loss}, first run ${orig}`);
    }
    await shot(page, 'resumed');
    assert.equal((await pageErrors(page)).trim(), '', 'no errors on the page');
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    console.log(`SmolLM2 LoRA (SwiftShader): model + data ready in ${(loadMs / 1000).toFixed(1)} s; ` +
      `loss ${run.steps.map((s) => s.loss.toFixed(3)).join(' -> ')}; validation ${run.evals.map((e) => `${e.step}:${e.loss.toFixed(3)}`).join(' ')}; ` +
      `${tps.toFixed(1)} tokens/s, ${mean(timed.map((s) => s.ms)).toFixed(0)} ms/step (first ${run.steps[0].ms.toFixed(0)} ms); ` +
      `exact match ${run.exact.before.correct}/${run.exact.before.total} -> ${run.exact.after.correct}/${run.exact.after.total}; ` +
      `chat ${JSON.stringify(reply.text)}; resumed from step ${held} (${pausedAt} checkpoints)`);
  });
});

test('a model by Hugging Face id from a stand-in hub, then from the browser cache', { timeout: 4 * MIN }, async () => {
  const llama = path.join(ROOT, 'tests/fixtures/llama');
  const tok = path.join(ROOT, 'tests/fixtures/smollm2-tokenizer');
  const hub = await serveHub({
    'webtune-test/tiny-llama': {
      'config.json': path.join(llama, 'config.json'),
      'model.safetensors': path.join(llama, 'model.safetensors'),
      'tokenizer.json': path.join(tok, 'tokenizer.json'),
      'tokenizer_config.json': path.join(tok, 'tokenizer_config.json'),
    },
  });
  try {
    const choose = { model: 'hub', data: 'upload', '#hub-id': 'webtune-test/tiny-llama' };
    await withPage('hub', [...WEBGPU, ...QUIET], { choose, query: `?hub=${encodeURIComponent(hub.url)}` }, async (page) => {
      await page.waitForSelector('#gpu-badge[data-state=ok]', { timeout: MIN });
      await page.click('#load-model');
      // The progress bar shows the weights coming in (the stand-in hub sends them slowly).
      await until(page, () => window.webtune.state.progress.some((p) => /model\.safetensors/.test(p.text) && p.progress > 0 && p.progress < 1), null, MIN);
      await shot(page, 'hub-download');
      await until(page, () => window.webtune.state.modelLoaded, null, 2 * MIN);
      assert.match(await page.locator('#model-info').innerText(), /webtune-test\/tiny-llama/);
      const fetched = hub.requests.filter((r) => r.includes('/webtune-test/tiny-llama/resolve/main/'));
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) assert.ok(fetched.some((r) => r.endsWith(`/${f}`)), `${f} fetched: ${fetched}`);
      await shot(page, 'hub-loaded');

      // A reload loads the same id from Cache Storage: not one request to the hub.
      const before = hub.requests.length;
      await page.reload();
      await page.waitForSelector('#gpu-badge[data-state=ok]', { timeout: MIN });
      assert.equal(await page.inputValue('#hub-id'), 'webtune-test/tiny-llama');
      await page.click('#load-model');
      await until(page, () => window.webtune.state.modelLoaded, null, 2 * MIN);
      assert.deepEqual(hub.requests.slice(before), [], 'no hub requests after the reload');
      assert.match(await page.locator('#model-status').innerText(), /Loaded/);

      // A text JSONL with a broken line 3, through the real tokenizer: shown inline.
      const bad = '{"prompt": "a", "completion": " b"}\n{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"prompt": "c", "completion": }\n';
      await page.setInputFiles('#data-file', { name: 'mine.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(bad) });
      await page.locator('#data-error').waitFor({ state: 'visible', timeout: 30_000 });
      const text = await page.locator('#data-error').innerText();
      assert.match(text, /mine\.jsonl, line 3/);
      assert.match(text, /invalid JSON/);
      assert.equal((await pageErrors(page)).trim(), '', 'no errors outside the data panel');
    });
  } finally {
    await hub.close();
  }
});

test('a lost GPU device resumes from the last automatic checkpoint', { timeout: 4 * MIN }, async () => {
  await withPage('device-loss', [...WEBGPU, ...QUIET], { choose: { model: 'demo', data: 'count' } }, async (page) => {
    await until(page, () => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded, null, 2 * MIN);
    await setSettings(page, { method: 'full', length: 12, length_unit: 'steps', batch: 4, lr: 0.01, warmup: 0, eval_every: 0, eval_items: 0, sample_every: 0, checkpoint_every: 4 });
    await until(page, () => window.webtune.state.plan && window.webtune.state.plan.total_steps === 12 && !window.webtune.state.busy, null, MIN);
    await page.click('#train');
    await until(page, () => window.webtune.state.steps.length >= 6, null, 2 * MIN);
    await page.evaluate(() => window.webtune.loseDevice());
    await until(page, () => window.webtune.state.lastDone, null, 2 * MIN);
    const s = await page.evaluate(() => ({ recoveries: window.webtune.state.recoveries, steps: window.webtune.state.steps.map((x) => x.step), done: window.webtune.state.lastDone, status: document.querySelector('#train-status').textContent }));
    assert.equal(s.recoveries, 1, JSON.stringify(s));
    assert.equal(s.done.reason, 'finished', JSON.stringify(s));
    assert.deepEqual(s.steps, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 'every step once: those after the checkpoint were trained again');
    assert.equal((await pageErrors(page)).trim(), '', 'no errors on the page');
  });
});

// GPT-2 from local files with LoRA: the target boxes are GPT-2's own layers (from the
// engine), it trains with clipping off (0), and the training state downloaded from the
// page loads back through "Load training state" with clipping still off.
test('LoRA on GPT-2 from local files; a state saved with clipping off loads back', { timeout: 4 * MIN }, async () => {
  const gpt2 = path.join(ROOT, 'tests/fixtures/gpt2');
  await withPage('gpt2-lora', [...WEBGPU, ...QUIET], { choose: { model: 'demo', data: 'count' } }, async (page) => {
    await until(page, () => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded, null, 2 * MIN);
    // An f32 safetensors base quantized to Q8_0 blocks on load, chosen on the page.
    await setSettings(page, { method: 'lora', lora_rank: 4, lora_alpha: 8, base: 'q8_0', max_grad_norm: 0, length: 3, length_unit: 'steps', batch: 4, lr: 0.01, warmup: 0, eval_every: 0, eval_items: 0, sample_every: 0, checkpoint_every: 0 });
    await page.setInputFiles('#model-files', ['config.json', 'model.safetensors'].map((f) => path.join(gpt2, f)));
    await page.click('#load-model');
    await until(page, () => {
      const s = window.webtune.state;
      return s.modelInfo && s.modelInfo.arch === 'Gpt2' && s.modelInfo.lora && s.dataLoaded && !s.busy && s.plan && s.plan.total_steps === 3;
    }, null, 2 * MIN);
    const info = await page.evaluate(() => window.webtune.state.modelInfo);
    assert.deepEqual(info.lora_targets, ['c_attn', 'c_proj', 'c_fc']);
    assert.match(info.base_precision, /Q8_0 x \d+/, `the base as Q8_0 blocks: ${info.base_precision}`);
    assert.deepEqual(info.lora.targets, ['c_attn', 'c_proj', 'c_fc'], 'all ticked: all-linear, expanded for GPT-2');
    const boxes = await page.$$eval('#lora-targets input', (b) => b.map((x) => x.dataset.target));
    assert.deepEqual(boxes, ['c_attn', 'c_proj', 'c_fc']);
    await page.click('#train');
    await until(page, () => window.webtune.state.lastDone, null, 2 * MIN);
    const run = await page.evaluate(() => ({ done: window.webtune.state.lastDone, steps: window.webtune.state.steps.map((s) => s.step), plan: window.webtune.state.plan }));
    assert.equal(run.done.reason, 'finished', JSON.stringify(run.done));
    assert.deepEqual(run.steps, [1, 2, 3]);
    assert.equal(run.plan.settings.max_grad_norm, 0);

    // "Continue on a GPU cluster": the TRL project, continuing from the adapter so far.
    const project = unzip(fs.readFileSync(await download(page, () => page.click('[data-export=project]'), 'gpt2-lora-project.zip')));
    for (const f of ['train.py', 'README.md', 'requirements.txt', 'data/train.jsonl', 'accelerate/fsdp.yaml', 'adapter/adapter_config.json', 'adapter/adapter_model.safetensors']) assert.ok(project[f], `${f} in the project: ${Object.keys(project)}`);
    assert.match(project['train.py'].toString(), /"adapter": "adapter"/);
    const file = await download(page, () => page.click('[data-export=state]'), 'gpt2-lora.state');
    await page.setInputFiles('#state-file', file);
    await until(page, () => /Restored/.test(document.querySelector('#train-status').textContent), null, MIN);
    assert.equal(await page.inputValue('#settings [name=max_grad_norm]'), '0');
    assert.match(await page.locator('#train-status').innerText(), /step 3 of 3/);
    assert.equal((await pageErrors(page)).trim(), '', 'no errors on the page');
    await shot(page, 'gpt2-lora');
  });
});

test('a browser without WebGPU gets the explanation', { timeout: MIN }, async () => {
  await withPage('no-webgpu', [...QUIET], {}, async (page) => {
    await page.waitForSelector('#no-webgpu', { state: 'visible', timeout: 30_000 });
    const text = await page.locator('#no-webgpu').innerText();
    assert.match(text, /WebGPU is not available/);
    assert.match(text, /Chrome or Edge 113\+/);
    assert.match(text, /--enable-unsafe-webgpu/);
    assert.equal(await page.locator('#gpu-badge').getAttribute('data-state'), 'error');
    await shot(page, 'no-webgpu');
  });
});

test('an invalid JSONL shows the error inline with its line number', { timeout: 2 * MIN }, async () => {
  await withPage('bad-jsonl', [...WEBGPU, ...QUIET], { choose: { model: 'demo', data: 'count' } }, async (page) => {
    await until(page, () => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded, null, MIN);
    assert.match(await page.locator('#model-info').innerText(), /Llama/);
    const bad = '{"input_ids": [1, 2, 3, 4], "prompt_len": 2}\n{"input_ids": [1, 2, 3], "prompt_len": 1}\n{"input_ids": [5, 6, oops]}\n';
    await page.check('input[name=data][value=upload]');
    await page.setInputFiles('#data-file', { name: 'mine.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(bad) });
    const box = page.locator('#data-error');
    await box.waitFor({ state: 'visible', timeout: 30_000 });
    const text = await box.innerText();
    assert.match(text, /mine\.jsonl, line 3/);
    assert.match(text, /invalid JSON/);
    assert.match(text, /oops/, 'the offending line is quoted');
    assert.equal(await page.locator('#train').isDisabled(), true, 'no training on broken data');
    await shot(page, 'bad-jsonl');
  });
});
