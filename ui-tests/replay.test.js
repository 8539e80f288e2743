// Replay of a finished job on its page: the states it renders from the stored events (read from
// /history, no new stream) are the states the page rendered live, event for event; the scrubber
// shows the job as it was after any event, with the ETA of that moment.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Aura, SMALL_JOB, launchBrowser, newPage, screenshotDir, watchRequests } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
  mkdirSync(screenshotDir, { recursive: true });
});
after(async () => {
  await browser?.close();
});

const states = (page) => page.$eval('video-generation-progress', (e) => [...e.states]);

/** Moves the scrubber to `k` events as a person dragging it would (an `input` event). */
const scrub = (page, k) => page.$eval('.replay-scrubber', (input, value) => {
  input.value = String(value);
  input.dispatchEvent(new Event('input', { bubbles: true }));
}, k);

test('replaying a finished job renders the same sequence of states as watching it live', async (t) => {
  const aura = await Aura.start();
  try {
    const jobId = await aura.createJob({ ...SMALL_JOB, brief: { topic: 'Why SQLite is enough' }, planSpec: { targetDuration: '00:00:08' } });
    const page = await newPage(browser);
    // Opened right away: the page follows the job live from its first event to its last.
    await page.goto(`${aura.base}/jobs/${jobId}`);
    if (!(await aura.renders(jobId))) {
      t.skip('this server renders no jobs (no pipeline workers)');
      return;
    }
    await aura.waitTerminal(jobId);
    await page.waitForFunction(() => document.querySelector('video-generation-progress')?.dataset.connection === 'done', null, { timeout: 30_000 });
    const live = await states(page);
    const ids = await aura.historyIds(jobId);
    assert.equal(live.length, ids.length, 'the live view rendered every stored event once');
    // Thirteen events every job has (two statuses, five stages started and completed, the end):
    // more means progress steps too, which is what a replay must pace.
    assert.ok(ids.length > 13, `only ${ids.length} events`);

    const streams = watchRequests(page, `/api/jobs/${jobId}/events`);
    const history = watchRequests(page, `/api/jobs/${jobId}/history`);
    await page.click('.replay-open');
    await page.waitForFunction(() => document.querySelector('.replay')?.dataset.state === 'paused');
    assert.equal(await page.$eval('.replay-scrubber', (e) => e.max), String(ids.length));

    // As fast as possible, from the first event to the last.
    await page.selectOption('.replay-speed', 'max');
    await page.click('.replay-play');
    await page.waitForFunction(() => document.querySelector('.replay')?.dataset.state === 'ended', null, { timeout: 30_000 });
    const replayed = await states(page);
    assert.deepEqual(replayed.map((s) => JSON.parse(s)), live.map((s) => JSON.parse(s)));
    assert.equal(await page.$$eval('.replay-log li', (l) => l.length), ids.length);

    // Paged with after= and limit=, and no stream opened for the replay.
    assert.ok(history.length >= 1);
    for (const h of history) assert.match(h.url, /[?&]after=\d+&limit=\d+/);
    assert.ok(history.length >= Math.ceil((ids.length + 1) / 100), `history read in pages: ${history.map((h) => h.url)}`);
    assert.deepEqual(streams, [], 'the replay opens no event stream');
    // Small pages put together give the whole history, each event once, in order.
    const paged = await page.evaluate(async (id) => {
      const replay = await import('/assets/job-replay.js');
      return (await replay.fetchHistory(id, 7)).map((e) => e.id);
    }, jobId);
    assert.deepEqual(paged, ids);

    // The scrubber mid-way: the job as it was after that many events, with the ETA of that moment.
    const running = live.findIndex((s) => JSON.parse(s).status.startsWith('Running · Visuals'));
    assert.ok(running > 0, 'the job rendered Visuals');
    const k = running + 1;
    await scrub(page, k);
    assert.deepEqual(JSON.parse((await states(page)).at(-1)), JSON.parse(live[k - 1]));
    assert.equal((await states(page)).length, k);
    const remaining = await page.$eval('.vgp-times div:nth-child(2) dd', (e) => e.textContent);
    assert.match(remaining, /about|estimating/);
    assert.equal(await page.$eval('video-generation-progress', (e) => e.dataset.status), 'Running');
    await page.screenshot({ path: join(screenshotDir, 'replay-desktop.png'), fullPage: true, animations: 'disabled' });

    // 1×: plays on from there at the recorded pace, and pauses where asked (at 10× a loaded
    // machine could reach the end between the look at the position and the click).
    await page.selectOption('.replay-speed', '1');
    await page.click('.replay-play');
    await page.waitForFunction((n) => Number(document.querySelector('.replay')?.dataset.position) > n, k, { timeout: 20_000 });
    await page.click('.replay-play');
    assert.equal(await page.$eval('.replay', (e) => e.dataset.state), 'paused');
    const at = Number(await page.$eval('.replay', (e) => e.dataset.position));
    assert.deepEqual(JSON.parse((await states(page)).at(-1)), JSON.parse(live[at - 1]));

    // Back to the live view: the finished job as it ended.
    await page.click('.replay-exit');
    await page.waitForFunction(() => document.querySelector('video-generation-progress')?.dataset.status === 'Completed');
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});
