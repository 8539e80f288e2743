// Screenshots of the form, a running job and a finished job at desktop and phone widths,
// written to docs/screenshots/ (committed, linked from the README).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
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

/**
 * An ffmpeg that waits while `hold` exists before encoding the narration (at most 60 s), so the
 * job stays Running in the Timeline stage (past 65 %) for as long as the screenshots take, on any machine.
 */
function heldFfmpeg(dir, hold) {
  const path = join(dir, 'held-ffmpeg');
  writeFileSync(
    path,
    `#!/bin/sh\ncase "$*" in *narration.txt*) i=0; while [ -e '${hold}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done;; esac\nexec ffmpeg "$@"\n`,
  );
  chmodSync(path, 0o755);
  return path;
}

test('screenshots of a running and a finished job at desktop and phone widths', async (t) => {
  const tools = mkdtempSync(join(tmpdir(), 'aura-held-'));
  const hold = join(tools, 'hold');
  writeFileSync(hold, '');
  const aura = await Aura.start({ env: { AURA_FFMPEG: heldFfmpeg(tools, hold) } });
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
    // The job cannot pass the narration encode while `hold` exists: both pages reach the
    // running state and stay there until the screenshots are taken.
    const midway = () => {
      const e = document.querySelector('video-generation-progress');
      return e?.dataset.status === 'Running' && Number(e.dataset.percent) >= 35;
    };
    await Promise.all(Object.values(pages).map((page) => page.waitForFunction(midway, null, { timeout: 120_000 })));
    for (const [name, page] of Object.entries(pages)) {
      await assertNoSidewaysScroll(page);
      await shot(page, `job-running-${name}.png`);
    }
    rmSync(hold);
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
    rmSync(tools, { recursive: true, force: true });
  }
});
