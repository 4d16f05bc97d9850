// The page in headless Chromium: load the engine demo, train, watch the loss fall; the
// no-WebGPU message; an invalid JSONL shown inline with its line number.
//
// Needs www/pkg built (scripts/test.sh phase 4 or scripts/serve.sh) and /usr/bin/chromium
// (override with CHROMIUM). Screenshots go to artifacts/ at the repository root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WWW = path.join(ROOT, 'www');
const ARTIFACTS = path.join(ROOT, 'artifacts');
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
// The same flags as webdriver.json (the wasm-bindgen tests' browser).
const QUIET = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const WEBGPU = ['--enable-unsafe-webgpu'];

let server;
fs.mkdirSync(ARTIFACTS, { recursive: true });

before(async () => {
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'webtune_bg.wasm')), 'www/pkg is not built: run scripts/serve.sh or scripts/test.sh');
  server = await serve(WWW);
});
after(async () => server && server.close());

async function open(args) {
  const browser = await chromium.launch({ executablePath: EXECUTABLE, headless: true, args });
  const context = await browser.newContext({ viewport: { width: 1360, height: 1100 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const log = [];
  page.on('console', (m) => log.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => log.push(`[pageerror] ${e.message}`));
  page.on('worker', (w) => w.on('console', (m) => log.push(`[worker.${m.type()}] ${m.text()}`)));
  await page.goto(server.url);
  return { browser, page, log };
}

// Run `fn`; on failure, print what the page logged and save a screenshot.
async function withPage(name, args, fn) {
  const { browser, page, log } = await open(args);
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

test('engine demo: load, train, the loss falls and the chart grows', { timeout: 300_000 }, async () => {
  await withPage('train', [...WEBGPU, ...QUIET], async (page) => {
    await page.waitForSelector('#gpu-badge[data-state=ok]', { timeout: 60_000 });
    // The demo model and dataset load by themselves.
    await page.waitForFunction(() => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded, null, { timeout: 60_000 });
    assert.match(await page.locator('#model-info').innerText(), /Llama/);
    assert.ok((await page.locator('#mask-preview .tok-trained').count()) > 0, 'the mask preview shows trained tokens');
    // A short run.
    await page.fill('input[name=length]', '24');
    await page.selectOption('select[name=length_unit]', 'steps');
    await page.fill('input[name=lr]', '0.01');
    await page.fill('input[name=warmup]', '2');
    await page.fill('input[name=eval_every]', '8');
    await page.waitForFunction(() => window.webtune.state.plan && window.webtune.state.plan.total_steps === 24, null, { timeout: 10_000 });
    await shot(page, 'before');
    await page.click('#train');
    await page.waitForFunction(() => Number(document.querySelector('#chart').dataset.points) >= 4, null, { timeout: 120_000 });
    await shot(page, 'during');
    // Pause holds the loop between steps; resume carries on.
    await page.click('#pause');
    await page.waitForFunction(() => window.webtune.state.training === 'paused', null, { timeout: 60_000 });
    const held = await page.evaluate(() => window.webtune.state.steps.length);
    await page.waitForTimeout(3000);
    assert.equal(await page.evaluate(() => window.webtune.state.steps.length), held, 'no steps while paused');
    assert.equal(await page.locator('#pause').innerText(), 'Resume');
    await page.click('#pause');
    await page.waitForFunction(() => /Done/.test(document.querySelector('#train-status').textContent), null, { timeout: 240_000 });
    await shot(page, 'after');

    const run = await page.evaluate(() => ({
      steps: window.webtune.state.steps.map((s) => ({ step: s.step, loss: s.loss, ms: s.ms, tokens: s.tokens })),
      evals: window.webtune.state.evals,
      points: Number(document.querySelector('#chart').dataset.points),
      progress: document.querySelector('#train-progress span').textContent,
      errors: document.querySelector('#errors').innerText,
    }));
    assert.equal(run.errors.trim(), '', 'no errors on the page');
    assert.equal(run.steps.length, 24);
    assert.equal(run.points, 24);
    assert.equal(run.progress, '24 / 24');
    assert.ok(run.evals.length >= 3, `validation losses: ${JSON.stringify(run.evals)}`);
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(run.steps.slice(0, 3).map((s) => s.loss));
    const last = mean(run.steps.slice(-3).map((s) => s.loss));
    // Skip the first step (shader compilation) for throughput.
    const timed = run.steps.slice(1);
    const tps = (timed.reduce((a, s) => a + s.tokens, 0) * 1000) / timed.reduce((a, s) => a + s.ms, 0);
    console.log(`loss ${first.toFixed(4)} -> ${last.toFixed(4)} over ${run.steps.length} steps; ` +
      `${tps.toFixed(0)} tokens/s, ${mean(timed.map((s) => s.ms)).toFixed(0)} ms/step (first step ${run.steps[0].ms.toFixed(0)} ms); ` +
      `validation ${run.evals.map((e) => e.loss.toFixed(3)).join(' -> ')}`);
    assert.ok(last < first * 0.8, `the loss falls: first steps ${first}, last steps ${last}`);
  });
});

test('a browser without WebGPU gets the explanation', { timeout: 60_000 }, async () => {
  await withPage('no-webgpu', [...QUIET], async (page) => {
    await page.waitForSelector('#no-webgpu', { state: 'visible', timeout: 30_000 });
    const text = await page.locator('#no-webgpu').innerText();
    assert.match(text, /WebGPU is not available/);
    assert.match(text, /Chrome or Edge 113\+/);
    assert.match(text, /--enable-unsafe-webgpu/);
    assert.equal(await page.locator('#gpu-badge').getAttribute('data-state'), 'error');
    await shot(page, 'no-webgpu');
  });
});

test('an invalid JSONL shows the error inline with its line number', { timeout: 120_000 }, async () => {
  await withPage('bad-jsonl', [...WEBGPU, ...QUIET], async (page) => {
    await page.waitForFunction(() => window.webtune.state.modelLoaded && window.webtune.state.dataLoaded, null, { timeout: 60_000 });
    // A model from local files (the file picker; drag and drop takes the same path).
    await page.check('input[name=model][value=local]');
    const fixture = path.join(ROOT, 'tests/fixtures/llama');
    await page.setInputFiles('#model-files', [path.join(fixture, 'config.json'), path.join(fixture, 'model.safetensors')]);
    await page.click('#load-model');
    await page.waitForFunction(() => /Loaded/.test(document.querySelector('#model-status').textContent), null, { timeout: 60_000 });
    assert.match(await page.locator('#model-info').innerText(), /model\.safetensors/);
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
