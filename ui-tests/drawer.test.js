// The jobs drawer: several jobs over ONE /api/events connection, each marked when it ends.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Aura, launchBrowser, newPage, watchRequests } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test('the drawer follows three concurrent jobs over a single /api/events connection', async () => {
  const aura = await Aura.start();
  try {
    const first = await aura.createJob();
    const page = await newPage(browser);
    const allEvents = watchRequests(page, '/api/events');
    const perJob = [];
    page.on('request', (req) => {
      if (/\/api\/jobs\/[^/]+\/events/.test(new URL(req.url()).pathname)) perJob.push(req.url());
    });
    await page.goto(`${aura.base}/`);
    await page.waitForFunction(() => document.querySelector('job-progress-drawer')?.dataset.connection === 'live');
    // Two more jobs while the page is open: they arrive through the stream, not a reload.
    const later = [await aura.createJob(), await aura.createJob()];
    const ids = [first, ...later];
    await page.click('.drawer-toggle');
    assert.equal(await page.getAttribute('.drawer-toggle', 'aria-expanded'), 'true');
    await page.waitForFunction((n) => document.querySelectorAll('.drawer-job').length === n, ids.length);
    for (const id of ids) {
      await page.locator(`.drawer-job[data-job-id="${id}"] .job-link`).waitFor();
      assert.equal(await page.getAttribute(`.drawer-job[data-job-id="${id}"] .job-link`, 'href'), `/jobs/${id}`);
    }
    const renders = await aura.renders(first);
    let expected = 'Completed';
    if (!renders) {
      // No workers in this build: end every job from the drawer's own Cancel action instead.
      expected = 'Cancelled';
      for (const id of ids) {
        await page.click(`.drawer-job[data-job-id="${id}"] button.danger`);
        await page.click('job-progress-drawer dialog button.danger');
        await page.waitForFunction((jid) => document.querySelector(`.drawer-job[data-job-id="${jid}"]`)?.dataset.status === 'Cancelled', id);
      }
    }
    for (const id of ids) {
      await page.waitForFunction(
        ([jid, status]) => document.querySelector(`.drawer-job[data-job-id="${jid}"]`)?.dataset.status === status,
        [id, expected],
        { timeout: 180_000 },
      );
    }
    assert.equal(await page.textContent('.drawer-toggle .badge'), '0', 'no active jobs left');
    assert.ok((await page.locator('.drawer-log .log-line').count()) >= ids.length, 'the activity log has lines');
    assert.equal(allEvents.length, 1, `one /api/events request: ${allEvents.map((e) => e.url)}`);
    assert.deepEqual(perJob, [], 'no per-job streams from the list page');
    // The page's own job list was kept current from the same stream.
    for (const id of ids) {
      assert.equal(await page.getAttribute(`#job-list [data-job-id="${id}"]`, 'data-status'), expected);
    }
    // Escape closes the drawer and gives focus back to its button.
    await page.focus('.drawer-panel .drawer-head button.icon');
    await page.keyboard.press('Escape');
    assert.equal(await page.getAttribute('.drawer-toggle', 'aria-expanded'), 'false');
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});
