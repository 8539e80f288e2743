// The home page's job list: a live bar, status, stage, ETA and Download link per job, fed by the
// page's one /api/events stream; a job created through the API after the page loaded appears
// within a second; running and queued jobs come first.

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

/** What the list shows of each job, in page order. */
function rows(page) {
  return page.$$eval('#job-list > li', (items) => items.map((li) => ({
    id: li.dataset.jobId,
    status: li.dataset.status,
    value: li.querySelector('progress')?.value ?? null,
    max: li.querySelector('progress')?.max ?? null,
    statusText: li.querySelector('.job-status')?.textContent ?? '',
    stage: li.querySelector('.job-stage')?.textContent ?? '',
    eta: li.querySelector('.job-eta')?.textContent ?? '',
    download: li.querySelector('.job-download:not([hidden])')?.getAttribute('href') ?? null,
  })));
}

/**
 * Watches the list from inside the page: every time it changes, running and queued rows must
 * stand before finished ones, and no job's bar may go back. Breaches are kept in
 * `window.__listBreaches`.
 */
async function watchList(page) {
  await page.evaluate(() => {
    window.__listBreaches = [];
    const best = new Map();
    const list = document.getElementById('job-list');
    const check = () => {
      const items = [...list.children];
      const done = ['Completed', 'Failed', 'Cancelled'];
      const firstDone = items.findIndex((li) => done.includes(li.dataset.status));
      if (firstDone >= 0 && items.slice(firstDone).some((li) => !done.includes(li.dataset.status))) {
        window.__listBreaches.push(`order: ${items.map((li) => li.dataset.status).join(',')}`);
      }
      for (const li of items) {
        const value = Number(li.querySelector('progress')?.value ?? NaN);
        const before = best.get(li.dataset.jobId) ?? 0;
        if (li.dataset.status !== 'Queued' && value < before) {
          window.__listBreaches.push(`bar of ${li.dataset.jobId} went from ${before} to ${value}`);
        }
        best.set(li.dataset.jobId, Math.max(before, value));
      }
    };
    new MutationObserver(check).observe(list, { subtree: true, childList: true, attributes: true, characterData: true });
    check();
  });
}

test('jobs created before and after the page loaded show live bars, stage, ETA and a Download link', async (t) => {
  // Two workers, so that both jobs run at the same time (the screenshot shows that).
  const aura = await Aura.start({ env: { AURA_WORKERS: '2' } });
  try {
    const job = (topic) => ({ ...SMALL_JOB, brief: { topic }, planSpec: { targetDuration: '00:00:12' } });
    const before = await aura.createJob(job('Created before the page loaded'));
    const page = await newPage(browser);
    const streams = watchRequests(page, '/api/events');
    const perJob = [];
    page.on('request', (req) => {
      if (/\/api\/jobs\/[^/]+\/events/.test(new URL(req.url()).pathname)) perJob.push(req.url());
    });
    await page.goto(`${aura.base}/`);
    await page.waitForFunction(() => document.querySelector('job-progress-drawer')?.dataset.connection === 'live');
    await page.locator(`#job-list li[data-job-id="${before}"] progress`).waitFor();
    await watchList(page);

    // Created through the API, not the page: it must arrive on the stream within a second.
    const after = await aura.createJob(job('Created after the page loaded'));
    const created = Date.now();
    await page.locator(`#job-list li[data-job-id="${after}"] progress`).waitFor({ timeout: 1000 });
    const appeared = Date.now() - created;
    assert.ok(appeared <= 1000, `the new job appeared after ${appeared} ms`);

    if (!(await aura.renders(before))) {
      t.skip('this server renders no jobs (no pipeline workers)');
      return;
    }
    // Both running at once: each shows a stage and an ETA, and the screenshot is taken.
    await page.waitForFunction((ids) => ids.every((id) => {
      const li = document.querySelector(`#job-list li[data-job-id="${id}"]`);
      return li?.dataset.status === 'Running' && li.querySelector('.job-stage').textContent
        && /left|estimating/.test(li.querySelector('.job-eta').textContent)
        && Number(li.querySelector('progress').value) > 0;
    }), [before, after], { timeout: 60_000 });
    for (const row of await rows(page)) {
      assert.equal(row.statusText, 'Running');
      assert.equal(row.max, 100);
      assert.ok(['Script', 'Audio', 'Visuals', 'Timeline', 'Render'].includes(row.stage), row.stage);
      assert.equal(row.download, null);
    }
    await page.screenshot({ path: join(screenshotDir, 'home-running-desktop.png'), fullPage: true, animations: 'disabled' });

    for (const id of [before, after]) await aura.waitTerminal(id);
    await page.waitForFunction((ids) => ids.every((id) => document.querySelector(`#job-list li[data-job-id="${id}"]`)?.dataset.status === 'Completed'), [before, after]);
    for (const row of await rows(page)) {
      assert.equal(row.value, 100);
      assert.equal(row.eta, '');
      assert.equal(row.download, `/api/jobs/${row.id}/output`);
      const res = await fetch(`${aura.base}${row.download}`, { headers: { range: 'bytes=0-15' } });
      assert.equal(res.status, 206);
      await res.arrayBuffer();
    }

    // A third job, queued or running, goes to the top of the finished ones.
    const third = await aura.createJob(job('Created last'));
    await page.locator(`#job-list li[data-job-id="${third}"]`).waitFor({ timeout: 1000 });
    assert.equal((await rows(page))[0].id, third);
    await aura.waitTerminal(third);
    await page.waitForFunction((id) => document.querySelector(`#job-list li[data-job-id="${id}"]`)?.dataset.status === 'Completed', third);

    assert.deepEqual(await page.evaluate(() => window.__listBreaches), []);
    assert.equal(streams.length, 1, 'one /api/events stream for the whole page');
    assert.deepEqual(perJob, [], 'no per-job stream');
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});
