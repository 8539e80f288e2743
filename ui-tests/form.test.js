// The new-job form: server validation next to the field, and a job rendered end to end.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Aura, launchBrowser, newPage, waitUntil } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test('an invalid value shows the server message next to its field and creates no job', async () => {
  const aura = await Aura.start();
  try {
    const page = await newPage(browser);
    await page.goto(`${aura.base}/`);
    await page.fill('[name="brief.topic"]', 'A valid topic');
    await page.fill('[name="renderSpec.fps"]', '61');
    const answered = page.waitForResponse((r) => r.url().endsWith('/api/jobs') && r.request().method() === 'POST');
    await page.click('#submit');
    assert.equal((await answered).status(), 422);
    const error = page.locator('.field:has([name="renderSpec.fps"]) .field-error');
    await error.waitFor();
    assert.match(await error.textContent(), /whole number from 1 to 60/);
    assert.equal(await page.getAttribute('[name="renderSpec.fps"]', 'aria-invalid'), 'true');
    const describedBy = await page.getAttribute('[name="renderSpec.fps"]', 'aria-describedby');
    assert.ok(describedBy.split(' ').includes('e-renderSpec.fps'), describedBy);
    assert.equal(await page.locator('.field-error').count(), 1, 'only the bad field is marked');
    assert.equal(page.url(), `${aura.base}/`, 'the page stays on the form');
    const jobs = await aura.api('/api/jobs');
    assert.deepEqual(jobs.body.jobs, [], 'no job was created');

    // Fixing the value clears the message and creates the job.
    await page.fill('[name="brief.topic"]', '');
    await page.fill('[name="renderSpec.fps"]', '30');
    await page.click('#submit');
    await page.locator('.field:has([name="brief.topic"]) .field-error').waitFor();
    assert.equal(await page.locator('.field:has([name="renderSpec.fps"]) .field-error').count(), 0);
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});

test('submitting the form renders the job through all five stages to a downloadable video', async (t) => {
  const aura = await Aura.start();
  try {
    const page = await newPage(browser);
    // Records every stage state change from the first moment of every page.
    await page.addInitScript(() => {
      window.__steps = [];
      new MutationObserver((records) => {
        for (const r of records) {
          const stage = r.target.dataset?.stage;
          if (stage) window.__steps.push(`${stage}:${r.target.dataset.state}`);
        }
      }).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'] });
    });
    await page.goto(`${aura.base}/`);
    await page.fill('[name="brief.topic"]', 'Form to video');
    await page.fill('[name="planSpec.targetDuration"]', '00:00:03');
    await page.selectOption('[name="renderSpec.res"]', '480p');
    await page.fill('[name="renderSpec.fps"]', '10');
    await page.fill('[name="renderSpec.videoBitrateK"]', '300');
    await page.click('#submit');
    await page.waitForURL(/\/jobs\/[0-9a-f-]{36}$/);
    const jobId = page.url().split('/').pop();
    const jobs = await aura.api('/api/jobs');
    assert.deepEqual(jobs.body.jobs.map((j) => j.jobId), [jobId]);
    assert.equal(jobs.body.jobs[0].request.renderSpec.fps, 10);
    if (!(await aura.renders(jobId))) {
      t.skip('this server renders no jobs (no pipeline workers): the job stays Queued');
      return;
    }
    const progress = page.locator('video-generation-progress');
    await page.waitForFunction(() => document.querySelector('video-generation-progress')?.dataset.status === 'Completed', null, { timeout: 120_000 });
    // Every stage ran (or was skipped) in order, and the overall bar is full.
    const steps = await page.evaluate(() => window.__steps);
    const order = ['Script', 'Audio', 'Visuals', 'Timeline', 'Render'];
    let at = -1;
    for (const stage of order) {
      const done = steps.findIndex((s) => s === `${stage}:done` || s === `${stage}:skipped`);
      assert.ok(done > at, `${stage} finished after the stage before it: ${steps.join(' ')}`);
      at = done;
    }
    for (const stage of order) {
      assert.match(await page.getAttribute(`[data-stage="${stage}"]`, 'data-state'), /^(done|skipped)$/);
    }
    assert.equal(await progress.getAttribute('data-percent'), '100');
    // The video plays from the output URL and the Download link fetches the file.
    const video = page.locator('video-generation-progress video');
    await video.waitFor();
    assert.equal(await video.getAttribute('src'), `/api/jobs/${jobId}/output`);
    await page.waitForFunction(() => document.querySelector('video-generation-progress video').readyState >= 1, null, { timeout: 20_000 });
    const href = await page.getAttribute('a[download]', 'href');
    assert.equal(href, `/api/jobs/${jobId}/output`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('a[download]')]);
    const file = await download.path();
    const { statSync } = await import('node:fs');
    assert.ok(statSync(file).size > 1000, 'the downloaded video has bytes');
    const res = await fetch(`${aura.base}${href}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^video\//);
    assert.deepEqual(page.problems, []);
    await waitUntil('the stream to end', async () => (await progress.getAttribute('data-connection')) === 'done');
  } finally {
    await aura.stop();
  }
});
