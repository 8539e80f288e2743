// Shared helpers for the browser tests: start the real `aura` binary on a free port with its own
// data folder, wait for it by polling /api/health (bounded, no fixed sleeps), talk to its API,
// and launch Debian's Chromium through playwright-core (no browser is ever downloaded).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '..');
export const screenshotDir = join(repoRoot, 'docs', 'screenshots');

/** The aura binary: $AURA_BIN, else $CARGO_TARGET_DIR/debug/aura, else target/debug/aura. */
export function auraBinary() {
  if (process.env.AURA_BIN) return process.env.AURA_BIN;
  const targetDir = process.env.CARGO_TARGET_DIR ?? join(repoRoot, 'target');
  const bin = join(resolve(repoRoot, targetDir), 'debug', 'aura');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo build --bin aura first`);
  return bin;
}

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** A small, fast job: 3 s, 480p, 10 fps. */
export const SMALL_JOB = {
  brief: { topic: 'UI test video' },
  planSpec: { targetDuration: '00:00:03' },
  renderSpec: { res: '480p', fps: 10, videoBitrateK: 300, audioBitrateK: 64, qualityLevel: 'Draft' },
};

export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** Polls `check` (async, truthy when done) every `everyMs` until `timeoutMs`. */
export async function waitUntil(what, check, { timeoutMs = 20_000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A running `aura serve`. `restart()` starts it again on the same port and data folder. */
export class Aura {
  static async start(options = {}) {
    const aura = new Aura(options);
    aura.port = options.port ?? (await freePort());
    aura.dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'aura-ui-'));
    aura.base = `http://127.0.0.1:${aura.port}`;
    await aura.spawn();
    return aura;
  }

  constructor(options) {
    this.env = options.env ?? {};
    this.log = [];
  }

  async spawn() {
    this.proc = spawn(auraBinary(), ['serve', '--addr', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir], {
      env: { ...process.env, AURA_LOG_FORMAT: 'text', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 400) this.log.shift();
      if (process.env.TEST_LOG) process.stderr.write(chunk);
    };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    const proc = this.proc;
    this.exited = new Promise((ok) => proc.once('exit', ok));
    await waitUntil('aura /api/health', async () => {
      if (proc.exitCode !== null) throw new Error(`aura exited ${proc.exitCode}: ${this.log.join('').slice(-2000)}`);
      const res = await fetch(`${this.base}/api/health`);
      return res.ok;
    });
  }

  /** SIGKILL: no graceful shutdown, streams cut mid-flight. */
  async kill() {
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  async restart() {
    await this.spawn();
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  async api(path, init = {}) {
    const res = await fetch(`${this.base}${path}`, init);
    const text = await res.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    return { status: res.status, headers: res.headers, body };
  }

  async createJob(request = SMALL_JOB) {
    const res = await this.api('/api/jobs', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(request),
    });
    if (res.status !== 201) throw new Error(`creating a job: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body.jobId;
  }

  async job(jobId) {
    return (await this.api(`/api/jobs/${jobId}`)).body;
  }

  async historyIds(jobId) {
    const res = await this.api(`/api/jobs/${jobId}/history?limit=10000`);
    return res.body.map((e) => e.id);
  }

  /** Waits for a terminal status; returns the snapshot. */
  async waitTerminal(jobId, timeoutMs = 120_000) {
    return waitUntil(`job ${jobId} to finish`, async () => {
      const job = await this.job(jobId);
      return ['Completed', 'Failed', 'Cancelled'].includes(job.status) ? job : null;
    }, { timeoutMs, everyMs: 250 });
  }

  /**
   * Whether this server renders jobs: a job leaves Queued within `timeoutMs`. Without the
   * pipeline (no workers) jobs stay Queued; tests that need rendering skip then.
   */
  async renders(jobId, timeoutMs = 15_000) {
    try {
      await waitUntil('the job to start', async () => (await this.job(jobId)).status !== 'Queued', { timeoutMs, everyMs: 200 });
      return true;
    } catch {
      return false;
    }
  }
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A new page that records console errors, page errors and CSP violations, so a test can assert
 * the UI ran cleanly under its Content-Security-Policy.
 */
export async function newPage(browser, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport, serviceWorkers: 'block' });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource|net::ERR_|EventSource/.test(msg.text())) {
      page.problems.push(`console: ${msg.text()}`);
    }
  });
  return page;
}

/** Every request the page makes to `pathname`, with the status of its response once known. */
export function watchRequests(page, pathname) {
  const seen = [];
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (url.pathname === pathname) seen.push({ url: req.url(), status: null, req });
  });
  page.on('response', (res) => {
    const hit = seen.find((s) => s.req === res.request());
    if (hit) hit.status = res.status();
  });
  return seen;
}

/** The ids the progress element handled, as numbers. */
/** For page.waitForFunction: the progress element's connection state is `c`. */
export const connectionIs = (c) => document.querySelector('video-generation-progress')?.dataset.connection === c;

export async function handledIds(page) {
  const raw = await page.$eval('video-generation-progress', (e) => e.dataset.handledIds ?? '');
  return raw ? raw.split(',').map(Number) : [];
}

/** Records every value `data-connection` takes on `selector`, from now on, into window.__conn. */
export async function recordConnection(page, selector) {
  await page.evaluate((sel) => {
    const node = document.querySelector(sel);
    window.__conn = [node.dataset.connection];
    new MutationObserver(() => {
      const last = window.__conn[window.__conn.length - 1];
      if (node.dataset.connection !== last) window.__conn.push(node.dataset.connection);
    }).observe(node, { attributes: true, attributeFilter: ['data-connection'] });
  }, selector);
}
