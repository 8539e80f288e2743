// The progress element on the job page: replay of a finished job, cancel, and the 204 end.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Aura, launchBrowser, newPage, handledIds, recordConnection, watchRequests, waitUntil, connectionIs } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const statusIs = (status) => (s) => document.querySelector('video-generation-progress')?.dataset.status === s;

/**
 * After the stream has ended, watch a while longer than the client's whole first backoff step
 * (3 s) plus the browser's own retry interval (3 s): a client that loops would ask again here.
 */
const NO_LOOP_WINDOW_MS = 7000;

test('cancelling from the page ends the job, fires job-cancelled and the stream stops at a 204', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    // A hostile topic: it must show as text, never become markup.
    const topic = '<img src=x id=pwned onerror="document.title=1"><b>bold</b>';
    const jobId = await aura.createJob({ brief: { topic } });
    const page = await newPage(browser);
    const events = watchRequests(page, `/api/jobs/${jobId}/events`);
    await page.goto(`${aura.base}/jobs/${jobId}`);
    await page.waitForFunction(connectionIs, 'live');
    assert.equal(await page.textContent('video-generation-progress .vgp-title'), topic);
    assert.equal(await page.locator('#pwned, main b').count(), 0, 'the topic was inserted as text');
    await recordConnection(page, 'video-generation-progress');
    await page.evaluate(() => {
      window.__fired = [];
      for (const name of ['job-complete', 'job-failed', 'job-cancelled']) {
        document.addEventListener(name, (e) => window.__fired.push([name, e.detail]));
      }
    });
    await page.click('video-generation-progress .vgp-actions button.danger');
    const dialog = page.locator('video-generation-progress dialog');
    await dialog.waitFor({ state: 'visible' });
    await dialog.locator('button.danger').click();
    await page.waitForFunction(statusIs, 'Cancelled', { timeout: 20_000 });
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    const fired = await page.evaluate(() => window.__fired);
    assert.deepEqual(fired.map(([name]) => name), ['job-cancelled']);
    assert.equal(fired[0][1].jobId, jobId);
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId));
    assert.equal((await aura.job(jobId)).status, 'Cancelled');
    assert.deepEqual(await page.evaluate(() => window.__conn), ['live', 'done'], 'the confirming 204 shows no reconnect');
    await new Promise((r) => setTimeout(r, NO_LOOP_WINDOW_MS));
    assert.deepEqual(events.map((e) => e.status), [200, 204], 'one stream, then one 204, then nothing');
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});

test('a page opened after the job finished replays it and ends with a 204 instead of looping', async () => {
  const aura = await Aura.start();
  try {
    const jobId = await aura.createJob();
    const renders = await aura.renders(jobId);
    if (!renders) {
      // No workers (the pipeline is not in this build): finish the job by cancelling it.
      assert.equal((await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST' })).status, 202);
    }
    const final = await aura.waitTerminal(jobId);
    const page = await newPage(browser);
    const events = watchRequests(page, `/api/jobs/${jobId}/events`);
    await page.goto(`${aura.base}/jobs/${jobId}`);
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    assert.equal(await page.getAttribute('video-generation-progress', 'data-status'), final.status);
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId));
    if (final.status === 'Completed') {
      await page.locator('video-generation-progress video').waitFor();
      assert.equal(await page.getAttribute('video-generation-progress a[download]', 'href'), `/api/jobs/${jobId}/output`);
      assert.match(await page.textContent('video-generation-progress .success'), /ready/);
      assert.equal(await page.getAttribute('[data-stage="Render"]', 'data-state'), 'done');
    }
    assert.equal(await page.locator('video-generation-progress .vgp-actions button.danger').isVisible(), false,
      'a finished job offers no Cancel');
    await new Promise((r) => setTimeout(r, NO_LOOP_WINDOW_MS));
    assert.deepEqual(events.map((e) => e.status), [200, 204], 'one replay, then one 204, then nothing');
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});

test('the example page monitors a job by id and reports its DOM events', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    const jobId = await aura.createJob();
    const page = await newPage(browser);
    const res = await page.goto(`${aura.base}/examples/progress`);
    const headers = res.headers();
    assert.match(headers['content-security-policy'], /script-src 'self'/);
    assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline/);
    assert.equal(headers['x-content-type-options'], 'nosniff');
    assert.equal(headers['referrer-policy'], 'no-referrer');
    assert.equal(headers['x-frame-options'], 'DENY');
    for (const text of ['job-status', 'step-progress', 'Last-Event-ID', '/cancel', 'job-complete']) {
      assert.ok((await page.textContent('main')).includes(text), `the page explains ${text}`);
    }
    await page.fill('#job-id-input', 'not-a-job');
    await page.click('#monitor-form button[type="submit"]');
    assert.match(await page.textContent('#example-error'), /not a job id/);
    await page.fill('#job-id-input', jobId);
    await page.click('#monitor-form button[type="submit"]');
    await page.waitForFunction(connectionIs, 'live');
    assert.equal(await page.isVisible('#example-error'), false);
    await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST' });
    await page.waitForFunction(() => !document.getElementById('example-error').hidden);
    assert.match(await page.textContent('#example-error'), /cancelled/);
    await page.click('#reset');
    assert.equal(await page.locator('video-generation-progress').count(), 0);
    assert.equal(await page.inputValue('#job-id-input'), '');
    await waitUntil('no console problems', async () => page.problems.length === 0, { timeoutMs: 1000 });
  } finally {
    await aura.stop();
  }
});

test('a page for a job that does not exist says so and stops asking', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    const jobId = '01234567-89ab-7cde-8f01-23456789abcd';
    const page = await newPage(browser);
    const events = watchRequests(page, `/api/jobs/${jobId}/events`);
    await page.goto(`${aura.base}/jobs/${jobId}`);
    await page.waitForFunction(connectionIs, 'disconnected', { timeout: 20_000 });
    assert.match(await page.textContent('video-generation-progress .conn'), /does not exist/);
    assert.equal(await page.isVisible('video-generation-progress .conn-wrap button'), false, 'no Retry for a missing job');
    assert.deepEqual(events.map((e) => e.status), [404]);
    const notUuid = await page.goto(`${aura.base}/jobs/not-a-uuid`);
    assert.equal(notUuid.status(), 400);
  } finally {
    await aura.stop();
  }
});
