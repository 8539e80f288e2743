// Screenshots of the form, a running job and a finished job at desktop and phone widths,
// written to docs/screenshots/ (committed, linked from the README).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Aura, SMALL_JOB, launchBrowser, newPage, screenshotDir } from './helpers.js';

const SIZES = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };

let browser;
before(async () => {
  browser = await launchBrowser();
  mkdirSync(screenshotDir, { recursive: true });
});
after(async () => {
  await browser?.close();
});

const shot = (page, name) => page.screenshot({ path: join(screenshotDir, name), fullPage: true, animations: 'disabled' });

/** Nothing wider than the viewport: usable at phone width without sideways scrolling. */
async function assertNoSidewaysScroll(page) {
  const { scroll, width } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: innerWidth }));
  assert.ok(scroll <= width, `page is ${scroll}px wide in a ${width}px viewport`);
}

test('screenshots of the form at desktop and phone widths', async () => {
  const aura = await Aura.start({ env: { AURA_WORKERS: '0' } });
  try {
    for (const [name, viewport] of Object.entries(SIZES)) {
      const page = await newPage(browser, viewport);
      await page.goto(`${aura.base}/`);
      await page.waitForFunction(() => document.querySelector('job-progress-drawer')?.dataset.connection === 'live');
      await assertNoSidewaysScroll(page);
      await shot(page, `form-${name}.png`);
      assert.deepEqual(page.problems, []);
      await page.context().close();
    }
  } finally {
    await aura.stop();
  }
});

test('screenshots of a running and a finished job at desktop and phone widths', async (t) => {
  const aura = await Aura.start();
  try {
    const jobId = await aura.createJob({
      ...SMALL_JOB,
      brief: { topic: 'How solar panels turn light into power' },
      planSpec: { targetDuration: '00:00:10' },
    });
    if (!(await aura.renders(jobId))) {
      t.skip('this server renders no jobs (no pipeline workers): no running or finished job to show');
      return;
    }
    const pages = {};
    for (const [name, viewport] of Object.entries(SIZES)) {
      pages[name] = await newPage(browser, viewport);
      await pages[name].goto(`${aura.base}/jobs/${jobId}`);
    }
    const midway = () => {
      const e = document.querySelector('video-generation-progress');
      return e?.dataset.status === 'Running' && Number(e.dataset.percent) >= 35;
    };
    for (const [name, page] of Object.entries(pages)) {
      await page.waitForFunction(midway, null, { timeout: 120_000 });
      await assertNoSidewaysScroll(page);
      await shot(page, `job-running-${name}.png`);
    }
    for (const [name, page] of Object.entries(pages)) {
      await page.waitForFunction(() => document.querySelector('video-generation-progress')?.dataset.status === 'Completed', null, { timeout: 120_000 });
      await page.waitForFunction(() => document.querySelector('video-generation-progress video')?.readyState >= 2, null, { timeout: 20_000 });
      await assertNoSidewaysScroll(page);
      await shot(page, `job-finished-${name}.png`);
      assert.deepEqual(page.problems, []);
    }
    const page = pages.desktop;
    await page.click('.drawer-toggle');
    await page.waitForFunction(() => getComputedStyle(document.querySelector('.drawer-panel')).visibility === 'visible');
    await page.waitForTimeout(300); // the slide-in transition
    await page.screenshot({ path: join(screenshotDir, 'drawer-desktop.png'), animations: 'disabled' });
  } finally {
    await aura.stop();
  }
});
