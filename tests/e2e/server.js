// A tiny static file server for www/ on a free localhost port (the tests' own, so they
// need nothing but node). Follows the symlinks in www/demo to the committed fixtures.
import http from 'node:http';
import fs from 'node:fs/promises';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.jsonl': 'application/jsonl',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

export async function serve(root) {
  const base = path.resolve(root);
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://localhost');
      let rel = decodeURIComponent(url.pathname);
      if (rel.endsWith('/')) rel += 'index.html';
      const file = path.resolve(base, `.${rel}`);
      if (!file.startsWith(base + path.sep)) throw Object.assign(new Error('outside root'), { code: 'ENOENT' });
      const body = await fs.readFile(file);
      res.writeHead(200, {
        'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
        'content-length': body.length,
        'cache-control': 'no-store',
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch (e) {
      res.writeHead(e.code === 'ENOENT' || e.code === 'EISDIR' ? 404 : 500, { 'content-type': 'text/plain' });
      res.end(String(e.message));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise((r) => server.close(r)) };
}

// A stand-in for the Hugging Face hub: GET /<owner>/<name>/resolve/<revision>/<file> from a
// local folder per repository, with CORS (the page's origin is another port) and a log of
// requests so a test can tell a cache hit from a download. Weights are sent in slow chunks
// so that the page's progress bar has something to show.
export async function serveHub(repos, { chunks = 8, delayMs = 120 } = {}) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    requests.push(`${req.method} ${url.pathname}`);
    const cors = { 'access-control-allow-origin': '*', 'access-control-expose-headers': 'content-length' };
    const m = url.pathname.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    const repo = m && repos[decodeURIComponent(m[1])];
    const name = m && decodeURIComponent(m[3]);
    if (!repo || !repo[name]) {
      res.writeHead(404, { ...cors, 'content-type': 'text/plain' });
      res.end('Entry not found');
      return;
    }
    const body = await fs.readFile(repo[name]);
    res.writeHead(200, { ...cors, 'content-type': 'application/octet-stream', 'content-length': body.length });
    if (req.method === 'HEAD') return res.end();
    if (!name.endsWith('.safetensors')) return res.end(body);
    const size = Math.ceil(body.length / chunks);
    for (let at = 0; at < body.length; at += size) {
      res.write(body.subarray(at, at + size));
      await new Promise((r) => setTimeout(r, delayMs));
    }
    res.end();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}`, requests, close: () => new Promise((r) => server.close(r)) };
}
