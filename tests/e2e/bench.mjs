// Browser benchmark: the engine's Session in headless Chromium (WebGPU; SwiftShader where
// there is no GPU), SmolLM2-135M with LoRA r8 on the sentiment demo. Prints the time of
// each phase: model load, data, every training step (the first compiles the pipelines),
// saving the state, generation and exact-match evaluation, the PEFT export.
//
//   cd tests/e2e && node bench.mjs             # BS=1 ML=64 STEPS=3 by default
//   BS=2 ML=128 STEPS=5 CHROMIUM=/usr/bin/chromium node bench.mjs
//
// Needs www/pkg built and the default model linked at www/models/ (scripts/serve.sh).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './server.js';

const WWW = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../www');
const MODEL = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const opts = { ml: Number(process.env.ML || 64), bs: Number(process.env.BS || 1), steps: Number(process.env.STEPS || 3), model: MODEL };

const server = await serve(WWW);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.log(m.text()));
  await page.goto(server.url + 'zip.js'); // any page of the origin: the bench imports the engine itself
  await page.evaluate(async ({ ml, bs, steps, model }) => {
    const ms = (t) => `${(performance.now() - t).toFixed(0)} ms`;
    const mod = await import('/pkg/webtune.js');
    await mod.default({ module_or_path: '/pkg/webtune_bg.wasm' });
    const s = await mod.Session.create();
    console.log(`adapter ${JSON.stringify(s.adapter_info())}`);
    let t = performance.now();
    const bytes = new Uint8Array(await (await fetch(`/models/${model}`)).arrayBuffer());
    const targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    s.load_model(model, { [model]: bytes }, { rank: 8, alpha: 16, targets });
    console.log(`load (fetch + dequantize + upload): ${ms(t)}`);
    t = performance.now();
    s.set_data('sentiment-train.jsonl', await (await fetch('/demo/sentiment-train.jsonl')).text());
    s.set_eval('sentiment-eval.jsonl', await (await fetch('/demo/sentiment-eval.jsonl')).text());
    console.log(`data: ${ms(t)}`);
    const plan = s.configure({ steps, batch: bs, max_len: ml, lr: 0.002, warmup: 0, schedule: 'constant', eval_every: 0, val_limit: 2 });
    console.log(`memory estimate: ${JSON.stringify(plan.memory)}`);
    for (let i = 0; i < steps; i++) {
      const r = await s.step();
      console.log(`step ${r.step}: loss ${r.loss.toFixed(4)}, ${r.tokens} tokens in ${r.ms.toFixed(0)} ms, ${r.tokens_per_s.toFixed(2)} tokens/s`);
    }
    t = performance.now();
    const st = await s.save_state();
    console.log(`save_state: ${st.length} bytes in ${ms(t)}`);
    for (const n of [1, 4]) {
      const g = await s.generate('Hello', { max_new_tokens: n }, () => true);
      console.log(`generate ${n} tokens after a ${g.prompt_tokens}-token prompt: ${g.ms.toFixed(0)} ms`);
    }
    t = performance.now();
    const ev = await s.evaluate(1);
    console.log(`exact match, 1 item: ${ms(t)} (${ev.correct}/${ev.total})`);
    t = performance.now();
    const p = await s.export_peft();
    console.log(`export_peft: ${Object.keys(p).join(', ')} in ${ms(t)}`);
  }, opts);
} finally {
  await browser.close();
  await server.close();
}
