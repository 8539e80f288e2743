// The opt-in transports in a real browser. A compressed stream: Chromium's EventSource asks for
// gzip, decodes it and handles every event once. A network that refuses event streams: the
// page's EventSource fails to open three times in a row, the client falls back to the
// WebSocket at /api/ws, and the page still handles every event exactly once. The refusal is a
// Playwright route that answers every stream request with a 502, as a proxy that strips
// `text/event-stream` would; the server is unchanged.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Aura, launchBrowser, newPage, handledIds, connectionIs } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test('when EventSource cannot open three times in a row the page falls back to the WebSocket and misses nothing', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    const jobId = await aura.createJob();
    const page = await newPage(browser);
    let refused = 0;
    await page.route(/\/events(\?|$)/, (route) => {
      refused += 1;
      return route.fulfill({ status: 502, contentType: 'text/plain', body: 'no event streams here' });
    });
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await page.goto(`${aura.base}/jobs/${jobId}`);
    // Three failed opens with the default backoff (3 s, then 6 s) before the fallback.
    await page.waitForFunction(connectionIs, 'live', { timeout: 45_000 });
    assert.ok(refused >= 3, `EventSource was refused ${refused} times`);
    assert.ok(sockets.some((u) => u.includes(`/api/ws?jobId=${jobId}`)), `sockets: ${sockets}`);
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId));
    // A new event reaches the page over the socket; the job socket's normal close ends it.
    assert.equal((await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST' })).status, 202);
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId), 'every event exactly once, in order');
    assert.equal(await page.getAttribute('video-generation-progress', 'data-status'), 'Cancelled');
  } finally {
    await aura.stop();
  }
});

test('with AURA_STREAM_COMPRESSION=gzip the page reads a gzip stream and handles every event once', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0', AURA_STREAM_COMPRESSION: 'gzip' } });
  try {
    const jobId = await aura.createJob();
    const page = await newPage(browser);
    const encodings = [];
    page.on('response', (res) => {
      if (res.url().includes(`/api/jobs/${jobId}/events`)) encodings.push(res.headers()['content-encoding']);
    });
    await page.goto(`${aura.base}/jobs/${jobId}`);
    await page.waitForFunction(connectionIs, 'live');
    assert.equal((await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST' })).status, 202);
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    assert.equal(encodings[0], 'gzip', `content-encoding of the stream: ${encodings}`);
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId), 'every event exactly once, in order');
  } finally {
    await aura.stop();
  }
});
