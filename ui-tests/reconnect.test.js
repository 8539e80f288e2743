// A server killed with SIGKILL and restarted on the same port and data folder: the page shows
// "reconnecting", resumes from the last id it handled, and handles every event exactly once.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Aura, SMALL_JOB, launchBrowser, newPage, handledIds, recordConnection, watchRequests, connectionIs } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const TERMINAL = ['Completed', 'Failed', 'Cancelled'];

/** Kills the server, waits for the page to notice, restarts it, waits for the page to resume. */
async function killAndRestart(aura, page) {
  await aura.kill();
  await page.waitForFunction(connectionIs, 'reconnecting', { timeout: 20_000 });
  await aura.restart();
  await page.waitForFunction(
    () => ['live', 'done'].includes(document.querySelector('video-generation-progress')?.dataset.connection),
    null,
    { timeout: 60_000 },
  );
  const states = await page.evaluate(() => window.__conn);
  const reconnecting = states.indexOf('reconnecting');
  assert.ok(reconnecting >= 0, `went through reconnecting: ${states}`);
  assert.ok(states.slice(reconnecting).some((s) => s === 'live' || s === 'done'), `came back: ${states}`);
}

test('a waiting job: after a kill and restart the page resumes and misses nothing', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    const jobId = await aura.createJob();
    const page = await newPage(browser);
    await page.goto(`${aura.base}/jobs/${jobId}`);
    await page.waitForFunction(connectionIs, 'live');
    await recordConnection(page, 'video-generation-progress');
    await killAndRestart(aura, page);
    await page.waitForFunction(connectionIs, 'live', { timeout: 20_000 });
    // An event committed after the restart reaches the page, once.
    assert.equal((await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST' })).status, 202);
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId));
    assert.equal(await page.getAttribute('video-generation-progress', 'data-status'), 'Cancelled');
  } finally {
    await aura.stop();
  }
});

test('a rendering job: after a kill and restart the page handles each event once, in order', async (t) => {
  const aura = await Aura.start();
  try {
    const jobId = await aura.createJob({ ...SMALL_JOB, planSpec: { targetDuration: '00:00:06' } });
    const page = await newPage(browser);
    await page.goto(`${aura.base}/jobs/${jobId}`);
    if (!(await aura.renders(jobId))) {
      t.skip('this server renders no jobs (no pipeline workers): the job stays Queued');
      return;
    }
    await page.waitForFunction(connectionIs, 'live');
    await recordConnection(page, 'video-generation-progress');
    // Kill it mid-render: once some progress has been shown.
    await page.waitForFunction(() => Number(document.querySelector('video-generation-progress').dataset.percent) > 0, null, { timeout: 60_000 });
    const status = await page.getAttribute('video-generation-progress', 'data-status');
    if (TERMINAL.includes(status)) {
      t.skip('the job finished before it could be interrupted');
      return;
    }
    await killAndRestart(aura, page);
    // Restart recovery gives the job a second attempt; it finishes and the page sees all of it.
    const final = await aura.waitTerminal(jobId, 60_000);
    assert.equal(final.status, 'Completed');
    assert.equal(final.attempt, 2);
    await page.waitForFunction(connectionIs, 'done', { timeout: 30_000 });
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId), 'every event exactly once, in order');
  } finally {
    await aura.stop();
  }
});

test('when the browser gives up on a 503 the client reopens with ?lastEventId after 3 s', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    const jobId = await aura.createJob();
    const page = await newPage(browser);
    const requests = watchRequests(page, `/api/jobs/${jobId}/events`);
    // The example page has no drawer, so the element's stream is the page's only one.
    await page.goto(`${aura.base}/examples/progress?jobId=${jobId}`);
    await page.waitForFunction(connectionIs, 'live');
    const last = (await handledIds(page)).at(-1);
    await recordConnection(page, 'video-generation-progress');
    // Back with no stream allowed at all: the browser's own retry gets a 503 and gives up.
    await aura.kill();
    aura.env.AURA_MAX_STREAMS = '0';
    await aura.restart();
    await page.waitForFunction(
      () => /try 1 of 5/.test(document.querySelector('video-generation-progress .conn').textContent),
      null,
      { timeout: 20_000 },
    );
    assert.ok(requests.some((r) => r.status === 503), 'the browser was refused');
    // Back with streams allowed: the client's own retry resumes from the last id it handled.
    await aura.kill();
    delete aura.env.AURA_MAX_STREAMS;
    await aura.restart();
    await page.waitForFunction(connectionIs, 'live', { timeout: 30_000 });
    const resumed = requests.filter((r) => r.status === 200).at(-1);
    assert.equal(new URL(resumed.url).searchParams.get('lastEventId'), String(last));
    assert.equal((await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST' })).status, 202);
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    assert.deepEqual(await handledIds(page), await aura.historyIds(jobId));
  } finally {
    await aura.stop();
  }
});
