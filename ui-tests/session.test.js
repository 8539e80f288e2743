// A server with tokens: the page asks for a token, signs in with POST /api/session, and from then
// on Chromium's own EventSource carries the aura_session cookie, also when it reconnects after
// the server was killed and restarted (sessions are kept in the data folder).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Aura, SMALL_JOB, auraBinary, launchBrowser, newPage, handledIds, watchRequests, connectionIs } from './helpers.js';

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});


test('signed in with a token, the stream carries the session cookie across a restart', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'aura-ui-'));
  const token = execFileSync(auraBinary(), ['token', 'create', 'alice', '--data-dir', dataDir], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  }).trim();
  const aura = await Aura.start({ dataDir, env: { AURA_WORKERS: '0', AURA_RETRY_MS: '300' } });
  const bearer = { authorization: `Bearer ${token}` };
  try {
    assert.equal((await aura.api('/api/jobs')).status, 401, 'the API needs credentials');
    const created = await aura.api('/api/jobs', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...bearer },
      body: JSON.stringify(SMALL_JOB),
    });
    assert.equal(created.status, 201);
    const { jobId } = created.body;

    const page = await newPage(browser);
    const streams = watchRequests(page, `/api/jobs/${jobId}/events`);
    await page.goto(`${aura.base}/jobs/${jobId}`);
    // The page itself is public; its API calls answer 401, so it asks for a token.
    await page.waitForSelector('#sign-in-token', { timeout: 20_000 });
    await page.fill('#sign-in-token', 'aura_wrong');
    await page.click('#sign-in-submit');
    await page.waitForSelector('#sign-in-error:not([hidden])');
    await page.fill('#sign-in-token', token);
    await Promise.all([page.waitForNavigation(), page.click('#sign-in-submit')]);
    await page.waitForFunction(connectionIs, 'live', { timeout: 20_000 });
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'aura_session');
    assert.ok(session?.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));
    assert.ok(!session.value.includes(token.slice(5)), 'the cookie is not the token');

    await aura.kill();
    await page.waitForFunction(connectionIs, 'reconnecting', { timeout: 20_000 });
    await aura.restart();
    await page.waitForFunction(connectionIs, 'live', { timeout: 30_000 });
    // An event committed after the restart reaches the page over the reconnected stream.
    assert.equal((await aura.api(`/api/jobs/${jobId}/cancel`, { method: 'POST', headers: bearer })).status, 202);
    await page.waitForFunction(connectionIs, 'done', { timeout: 20_000 });
    const history = await aura.api(`/api/jobs/${jobId}/history`, { headers: bearer });
    assert.deepEqual(await handledIds(page), history.body.map((e) => e.id));
    const answered = streams.filter((s) => s.status !== null).map((s) => s.status);
    assert.ok(answered.filter((s) => s === 200).length >= 2, `streams before and after the restart: ${answered}`);
    // Only the first, before signing in, may have been refused.
    assert.ok(!answered.slice(answered.indexOf(200)).includes(401), `no stream was refused once signed in: ${answered}`);
    assert.deepEqual(page.problems, []);
  } finally {
    await aura.stop();
  }
});
