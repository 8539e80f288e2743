// <video-generation-progress job-id="…">: one job's progress, fed by its event stream.
//
// Replays the job's whole history, then follows it live, so it renders the same whether it is
// opened before, during or after the render. Dispatches `job-complete` (detail: videoUrl,
// videoPath), `job-failed` (detail: the error with its step) and `job-cancelled` (detail: step).
// For tests it exposes `data-handled-ids` (comma-separated), `data-connection`, `data-status`
// and `data-percent`; each stage's item carries `data-state`. `states` holds what it showed
// after each event (`renderedState()`), so a replay can be compared with the live run.
//
// Replay: `beginReplay()` stops the stream and forgets everything; the caller then feeds stored
// events through `apply()` and moves the clock the elapsed time and ETA are computed from with
// `setReplayClock()` (see job-replay.js). The same code renders a live event and a replayed one.

import { SseClient } from './sse-client.js';
import {
  STAGES,
  asJobId,
  clampPercent,
  cleanText,
  el,
  estimateRemaining,
  formatDuration,
  jobUrl,
  outputUrl,
  parseTime,
} from './format.js';

const CONNECTION_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  disconnected: 'Disconnected',
  done: 'Stream finished',
  replay: 'Replay',
};

/** The most rendered states kept for comparison. */
const MAX_STATES = 20000;

const STEP_TEXT = {
  pending: 'Pending',
  running: 'Running',
  done: 'Done',
  skipped: 'Skipped',
  failed: 'Failed',
  cancelled: 'Stopped',
};

export class VideoGenerationProgress extends HTMLElement {
  static observedAttributes = ['job-id'];

  connectedCallback() {
    if (!this.built) this.build();
    this.restart();
  }

  disconnectedCallback() {
    this.stop();
  }

  attributeChangedCallback() {
    if (this.isConnected && this.built) this.restart();
  }

  build() {
    this.built = true;
    this.classList.add('vgp');
    this.ui = {};
    const u = this.ui;
    u.title = el('h2', { class: 'vgp-title' }, 'Video job');
    u.conn = el('span', { class: 'conn', role: 'status' });
    u.retry = el('button', { type: 'button', class: 'secondary', hidden: true }, 'Retry connection');
    u.retry.addEventListener('click', () => this.client?.retry());
    u.status = el('p', { class: 'vgp-status', 'aria-live': 'polite' });
    u.fill = el('span', { class: 'fill' });
    u.bar = el('div', {
      class: 'bar overall',
      role: 'progressbar',
      'aria-label': 'Overall progress',
      'aria-valuemin': '0',
      'aria-valuemax': '100',
      'aria-valuenow': '0',
    }, u.fill);
    u.percent = el('span', { class: 'vgp-percent' }, '0%');
    u.message = el('p', { class: 'vgp-message', 'aria-live': 'polite' });
    u.elapsed = el('dd', {}, '–');
    u.remaining = el('dd', {}, '–');
    u.steps = new Map();
    const stepper = el('ol', { class: 'stepper', 'aria-label': 'Stages' });
    for (const stage of STAGES) {
      const label = el('span', { class: 'step-state' });
      const fill = el('span', { class: 'fill' });
      const bar = el('div', {
        class: 'bar mini', role: 'progressbar', 'aria-label': `${stage} progress`,
        'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0',
      }, fill);
      const item = el('li', { class: 'step', 'data-stage': stage },
        el('span', { class: 'step-dot', 'aria-hidden': 'true' }),
        el('span', { class: 'step-name' }, stage), label, bar);
      u.steps.set(stage, { item, label, bar, fill });
      stepper.append(item);
    }
    u.notices = el('ul', { class: 'notices', 'aria-live': 'polite', 'aria-label': 'Warnings and errors' });
    u.result = el('div', { class: 'vgp-result', hidden: true });
    u.failure = el('div', { class: 'vgp-failure', role: 'alert', hidden: true });
    u.cancel = el('button', { type: 'button', class: 'danger' }, 'Cancel job');
    u.cancel.addEventListener('click', () => this.askCancel());
    u.cancelNote = el('span', { class: 'vgp-cancel-note', 'aria-live': 'polite' });
    u.dialog = this.buildDialog();
    this.replaceChildren(
      el('div', { class: 'vgp-head' }, u.title, el('span', { class: 'conn-wrap' }, u.conn, u.retry)),
      u.status,
      el('div', { class: 'overall-row' }, u.bar, u.percent),
      u.message,
      el('dl', { class: 'vgp-times' },
        el('div', {}, el('dt', {}, 'Elapsed'), u.elapsed),
        el('div', {}, el('dt', {}, 'Remaining'), u.remaining)),
      stepper,
      u.notices,
      u.failure,
      u.result,
      el('div', { class: 'vgp-actions' }, u.cancel, u.cancelNote),
      u.dialog,
    );
  }

  buildDialog() {
    const keep = el('button', { type: 'button', class: 'secondary', autofocus: true }, 'Keep running');
    const confirm = el('button', { type: 'button', class: 'danger' }, 'Cancel job');
    const dialog = el('dialog', { class: 'confirm', 'aria-labelledby': 'vgp-confirm-title' },
      el('h3', { id: 'vgp-confirm-title' }, 'Cancel this job?'),
      el('p', {}, 'The render stops and cannot be resumed.'),
      el('div', { class: 'dialog-actions' }, keep, confirm));
    keep.addEventListener('click', () => dialog.close());
    confirm.addEventListener('click', () => {
      dialog.close();
      this.cancelJob();
    });
    return dialog;
  }

  /** Forgets everything and follows the job named by `job-id` (if any) from its first event. */
  restart() {
    this.stop();
    this.reset();
    const jobId = asJobId(this.getAttribute('job-id'));
    this.jobId = jobId;
    if (!jobId) {
      if (this.getAttribute('job-id')) this.showFailure('Invalid job id', 'A job id is a UUID.');
      return;
    }
    this.ui.title.textContent = `Job ${jobId.slice(0, 8)}`;
    const client = new SseClient(`/api/jobs/${jobId}/events`, { snapshotUrl: jobUrl(jobId) });
    this.client = client;
    client.onState((state, detail) => this.showConnection(state, detail));
    client.onAny((type, data, id) => (data ? this.apply(type, data, id) : this.handled(id)));
    client.start();
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  /** Handles one event, live or replayed, and records what is shown after it. */
  apply(type, d, id) {
    this.handled(id);
    const handlers = {
      'job-status': () => this.onJobStatus(d, id),
      'step-status': () => this.onStepStatus(d, id),
      'step-progress': () => this.onStepProgress(d, id),
      'job-completed': () => this.onCompleted(d, id),
      'job-failed': () => this.onFailed(d, id),
      'job-cancelled': () => this.onCancelled(d, id),
      warning: () => this.onNotice('warning', d, id),
      error: () => this.onNotice('error', d, id),
    };
    handlers[type]?.();
    if (this.states.length < MAX_STATES) this.states.push(this.renderedState(id, type));
  }

  /** What the element shows, without the clock-dependent times: equal live and in a replay. */
  renderedState(id, type) {
    const u = this.ui;
    return JSON.stringify({
      id,
      type,
      title: u.title.textContent,
      status: u.status.textContent,
      percent: u.percent.textContent,
      message: u.message.textContent,
      steps: [...u.steps.values()].map((s) => `${s.item.dataset.state}:${s.bar.getAttribute('aria-valuenow')}`),
      notices: [...u.notices.children].map((n) => n.textContent),
      failure: u.failure.hidden ? '' : u.failure.textContent,
      result: u.result.hidden ? '' : u.result.querySelector('p')?.textContent ?? '',
    });
  }

  /** Leaves the live view: no stream; events come from `apply()`, time from the replay clock. */
  beginReplay() {
    this.stop();
    this.reset();
    this.replaying = true;
    this.ui.cancel.hidden = true;
    this.showConnection('replay');
  }

  /** The moment the replay shows, in milliseconds since the epoch. */
  setReplayClock(ms) {
    this.replayNow = ms;
    this.tick();
  }

  /** Back to the live view of the job (its stream from the first event). */
  endReplay() {
    this.replaying = false;
    this.restart();
  }

  now() {
    return this.replaying && Number.isFinite(this.replayNow) ? this.replayNow : Date.now();
  }

  stop() {
    this.client?.close();
    this.client = null;
    clearInterval(this.ticker);
    this.ticker = null;
  }

  reset() {
    const u = this.ui;
    this.replaying = false;
    this.replayNow = NaN;
    this.states = [];
    this.status = null;
    this.stage = null;
    this.percent = 0;
    this.startedAt = NaN;
    this.finishedAt = NaN;
    this.terminal = false;
    this.dataset.handledIds = '';
    this.dataset.status = '';
    this.dataset.percent = '0';
    this.showConnection('idle');
    u.title.textContent = 'Video job';
    u.status.textContent = 'Waiting for the first event…';
    u.message.textContent = '';
    u.notices.replaceChildren();
    u.result.replaceChildren();
    u.result.hidden = true;
    u.failure.replaceChildren();
    u.failure.hidden = true;
    u.cancel.hidden = false;
    u.cancel.disabled = false;
    u.cancelNote.textContent = '';
    this.setPercent(0);
    for (const stage of STAGES) this.setStep(stage, 'pending', 0);
    this.tick();
  }

  handled(id) {
    this.dataset.handledIds = this.dataset.handledIds ? `${this.dataset.handledIds},${id}` : String(id);
  }

  onJobStatus(d, id) {
    this.status = String(d.status ?? '');
    this.dataset.status = this.status;
    const topic = d.request?.brief?.topic;
    if (typeof topic === 'string' && topic) this.ui.title.textContent = cleanText(topic, 120);
    if (d.status === 'Running' && !Number.isFinite(this.startedAt)) this.startedAt = parseTime(d.at);
    if (d.status === 'Queued') this.startedAt = NaN;
    this.setPercent(d.percent);
    if (STAGES.includes(d.stage)) this.stage = d.stage;
    this.showStatusLine();
    if (d.status === 'Cancelling') this.ui.cancelNote.textContent = 'Cancelling…';
    this.tick();
  }

  onStepStatus(d, id) {
    if (!STAGES.includes(d.step)) return;
    if (!Number.isFinite(this.startedAt)) this.startedAt = parseTime(d.at);
    const state = { Started: 'running', Completed: 'done', Skipped: 'skipped' }[d.state];
    if (state) this.setStep(d.step, state, state === 'running' ? 0 : 100);
    if (state === 'running') {
      this.stage = d.step;
      // The previous stage's last message would be stale now.
      this.ui.message.textContent = `${d.step}: started`;
      this.showStatusLine();
    }
  }

  /** `Running · Visuals · 42%`: the status, the stage now running and the overall percent. */
  showStatusLine() {
    if (this.terminal) return;
    const stage = this.stage && this.status !== 'Queued' ? ` · ${this.stage}` : '';
    this.ui.status.textContent = `${cleanText(this.status, 40)}${stage} · ${clampPercent(this.percent)}%`;
  }

  onStepProgress(d, id) {
    if (!STAGES.includes(d.step)) return;
    this.setStep(d.step, 'running', d.progressPct);
    this.setPercent(d.percent);
    this.stage = d.step;
    this.ui.message.textContent = `${d.step}: ${cleanText(d.message, 200)}`;
    this.showStatusLine();
  }

  onCompleted(d, id) {
    this.finish('Completed', d.at);
    this.setPercent(100);
    for (const [stage, step] of this.ui.steps) {
      if (step.item.dataset.state !== 'skipped') this.setStep(stage, 'done', 100);
    }
    const output = d.output ?? {};
    const src = outputUrl(this.jobId);
    const size = Number(output.sizeBytes);
    const seconds = Number(output.durationSec);
    const facts = [
      Number.isFinite(seconds) ? `${formatDuration(seconds)} long` : null,
      Number.isFinite(size) ? `${(size / 1048576).toFixed(size < 1048576 ? 2 : 1)} MB` : null,
    ].filter(Boolean).join(', ');
    this.ui.status.textContent = 'Completed · 100%';
    this.ui.message.textContent = '';
    this.ui.result.replaceChildren(
      el('p', { class: 'success', role: 'status' }, `Your video is ready${facts ? ` (${facts})` : ''}.`),
      el('video', { controls: true, preload: 'metadata', src, class: 'player' }),
      el('p', {}, el('a', { href: src, download: '', class: 'button' }, 'Download video')),
    );
    this.ui.result.hidden = false;
    this.emit('job-complete', { jobId: this.jobId, videoUrl: output.videoUrl ?? src, videoPath: output.videoPath ?? null });
  }

  onFailed(d, id) {
    this.finish('Failed', d.at);
    const error = { code: cleanText(d.error?.code, 80), message: cleanText(d.error?.message, 400) };
    if (STAGES.includes(d.step)) this.setStep(d.step, 'failed', null);
    this.ui.status.textContent = `Failed${d.step ? ` in ${d.step}` : ''}`;
    this.showFailure(`The job failed${d.step ? ` during ${d.step}` : ''}.`, `${error.code}: ${error.message}`);
    this.emit('job-failed', { jobId: this.jobId, step: d.step ?? null, ...error });
  }

  onCancelled(d, id) {
    this.finish('Cancelled', d.at);
    if (STAGES.includes(d.step)) this.setStep(d.step, 'cancelled', null);
    this.ui.status.textContent = `Cancelled${d.step ? ` during ${d.step}` : ''}`;
    this.ui.cancelNote.textContent = 'The job was cancelled.';
    this.emit('job-cancelled', { jobId: this.jobId, step: d.step ?? null });
  }

  onNotice(kind, d, id) {
    const where = STAGES.includes(d.step) ? ` (${d.step})` : '';
    this.ui.notices.append(el('li', { class: `notice ${kind}` },
      el('strong', {}, `${kind === 'warning' ? 'Warning' : 'Error'} ${cleanText(d.code, 80)}${where}: `),
      cleanText(d.message, 400)));
  }

  finish(status, at) {
    this.terminal = true;
    this.status = status;
    this.dataset.status = status;
    this.finishedAt = parseTime(at);
    this.ui.cancel.hidden = true;
    this.tick();
  }

  setPercent(value) {
    const p = clampPercent(value);
    // Overall percent never goes down within an attempt; a new attempt starts with Queued.
    this.percent = this.status === 'Queued' ? p : Math.max(this.percent, p);
    this.dataset.percent = String(this.percent);
    this.ui.fill.style.width = `${this.percent}%`;
    this.ui.bar.setAttribute('aria-valuenow', String(this.percent));
    this.ui.percent.textContent = `${this.percent}%`;
    this.tick();
  }

  setStep(stage, state, pct) {
    const step = this.ui.steps.get(stage);
    if (!step) return;
    step.item.dataset.state = state;
    step.label.textContent = STEP_TEXT[state];
    if (pct !== null) {
      const p = clampPercent(pct);
      step.fill.style.width = `${p}%`;
      step.bar.setAttribute('aria-valuenow', String(p));
    }
    if (state === 'running') step.item.setAttribute('aria-current', 'step');
    else step.item.removeAttribute('aria-current');
  }

  tick() {
    const u = this.ui;
    if (!Number.isFinite(this.startedAt)) {
      u.elapsed.textContent = '–';
      u.remaining.textContent = '–';
      return;
    }
    const end = this.terminal && Number.isFinite(this.finishedAt) ? this.finishedAt : this.now();
    const elapsed = Math.max(0, (end - this.startedAt) / 1000);
    u.elapsed.textContent = formatDuration(elapsed);
    if (this.terminal) {
      u.remaining.textContent = this.status === 'Completed' ? 'Done' : '–';
      if (!this.replaying) {
        clearInterval(this.ticker);
        this.ticker = null;
      }
      return;
    }
    const left = estimateRemaining(elapsed, this.percent);
    u.remaining.textContent = Number.isFinite(left) ? `about ${formatDuration(left)}` : 'estimating…';
  }

  showConnection(state, detail) {
    this.dataset.connection = state;
    const u = this.ui;
    let text = CONNECTION_TEXT[state] ?? state;
    if (state === 'reconnecting' && detail?.inMs) {
      text = `Reconnecting in ${Math.round(detail.inMs / 1000)} s (try ${detail.attempt} of ${detail.of})…`;
    }
    if (state === 'disconnected' && detail?.reason) text = `Disconnected: ${detail.reason}`;
    u.conn.textContent = text;
    u.conn.dataset.state = state;
    u.retry.hidden = !(state === 'disconnected' && !detail?.final);
  }

  showFailure(title, text) {
    this.ui.failure.replaceChildren(el('strong', {}, title), el('p', {}, text));
    this.ui.failure.hidden = false;
  }

  askCancel() {
    if (this.terminal || !this.jobId) return;
    if (typeof this.ui.dialog.showModal === 'function') this.ui.dialog.showModal();
    else this.cancelJob();
  }

  async cancelJob() {
    const u = this.ui;
    u.cancel.disabled = true;
    u.cancelNote.textContent = 'Cancelling…';
    try {
      const res = await fetch(`${jobUrl(this.jobId)}/cancel`, { method: 'POST' });
      if (res.status === 409) u.cancelNote.textContent = 'The job had already finished.';
      else if (!res.ok) {
        const problem = await res.json().catch(() => ({}));
        u.cancelNote.textContent = `Cancel failed: ${cleanText(problem.detail ?? res.statusText, 200)}`;
        u.cancel.disabled = false;
      }
    } catch {
      u.cancelNote.textContent = 'Cancel failed: the server cannot be reached.';
      u.cancel.disabled = false;
    }
  }

  emit(name, detail) {
    if (this.replaying) return;
    this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
  }
}

if (!customElements.get('video-generation-progress')) {
  customElements.define('video-generation-progress', VideoGenerationProgress);
}
