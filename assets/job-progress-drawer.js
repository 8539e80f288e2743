// <job-progress-drawer>: a slide-out panel of active and recent jobs, fed by ONE stream.
//
// Browsers allow six HTTP/1.1 connections per origin, so the drawer never opens a stream per
// job. It reads the recent jobs once (GET /api/jobs), then follows `/api/events` from the
// largest `lastEventId` among them: the list is one consistent read, so every later event is
// on the stream and no earlier one is needed. A job it has not seen yet (created since, or
// older than the list) is fetched once for its topic.
//
// Each job's item carries `data-job-id` and `data-status`; the element carries
// `data-connection`. Every job it lists and every change of a job is also announced on
// `document` as a `job-updated` event (detail: the job), so a page can keep its own list
// without a stream of its own.

import { SseClient } from './sse-client.js';
import {
  TERMINAL_STATUSES,
  clampPercent,
  cleanText,
  clock,
  describeEvent,
  el,
  estimateRemaining,
  formatDuration,
  jobUrl,
  parseTime,
} from './format.js';

const MAX_JOBS = 20;
const MAX_LOG_LINES = 60;

export class JobProgressDrawer extends HTMLElement {
  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.jobs = new Map();
    this.lookups = new Set();
    this.build();
    this.init();
    this.ticker = setInterval(() => this.renderTimes(), 1000);
  }

  disconnectedCallback() {
    this.client?.close();
    clearInterval(this.ticker);
    this.built = false;
  }

  build() {
    this.classList.add('drawer');
    const panelId = `drawer-panel-${Math.random().toString(36).slice(2, 8)}`;
    this.badge = el('span', { class: 'badge', 'aria-label': 'active jobs' }, '0');
    this.toggle = el('button', {
      type: 'button', class: 'drawer-toggle', 'aria-expanded': 'false', 'aria-controls': panelId,
    }, 'Jobs ', this.badge);
    this.toggle.addEventListener('click', () => this.setOpen(!this.open));
    this.conn = el('span', { class: 'conn', role: 'status' }, 'Connecting…');
    this.retryButton = el('button', { type: 'button', class: 'secondary', hidden: true }, 'Retry');
    this.retryButton.addEventListener('click', () => (this.client ? this.client.retry() : this.init()));
    const close = el('button', { type: 'button', class: 'icon', 'aria-label': 'Close the jobs panel' }, '×');
    close.addEventListener('click', () => this.setOpen(false));
    this.list = el('ul', { class: 'drawer-jobs', 'aria-label': 'Active and recent jobs' });
    this.empty = el('p', { class: 'muted' }, 'No jobs yet.');
    this.log = el('ol', { class: 'drawer-log', role: 'log', 'aria-live': 'off', 'aria-label': 'Recent activity' });
    this.dialog = this.buildDialog();
    this.panel = el('aside', { id: panelId, class: 'drawer-panel', 'aria-label': 'Jobs', inert: true },
      el('div', { class: 'drawer-head' }, el('h2', {}, 'Jobs'), this.conn, this.retryButton, close),
      this.empty, this.list,
      el('h3', {}, 'Recent activity'), this.log, this.dialog);
    this.panel.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !this.dialog.open) {
        this.setOpen(false);
        this.toggle.focus();
      }
    });
    this.replaceChildren(this.toggle, this.panel);
  }

  buildDialog() {
    const keep = el('button', { type: 'button', class: 'secondary', autofocus: true }, 'Keep running');
    const confirm = el('button', { type: 'button', class: 'danger' }, 'Cancel job');
    this.dialogText = el('p', {});
    const dialog = el('dialog', { class: 'confirm', 'aria-label': 'Cancel a job' },
      el('h3', {}, 'Cancel this job?'), this.dialogText, el('div', { class: 'dialog-actions' }, keep, confirm));
    keep.addEventListener('click', () => dialog.close());
    confirm.addEventListener('click', () => {
      dialog.close();
      if (this.pendingCancel) this.cancel(this.pendingCancel);
    });
    return dialog;
  }

  get open() {
    return this.classList.contains('open');
  }

  setOpen(open) {
    this.classList.toggle('open', open);
    this.toggle.setAttribute('aria-expanded', String(open));
    this.panel.inert = !open;
    if (open) [...this.panel.querySelectorAll('button, a')].find((b) => !b.hidden)?.focus();
  }

  async init() {
    this.client?.close();
    this.showConnection('connecting');
    let listed;
    try {
      const res = await fetch(`/api/jobs?limit=${MAX_JOBS}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`status ${res.status}`);
      listed = await res.json();
    } catch {
      this.showConnection('disconnected', { reason: 'The job list cannot be read.' });
      return;
    }
    let resume = 0;
    for (const snapshot of listed.jobs ?? []) {
      const job = this.upsert(snapshot.jobId, this.fromSnapshot(snapshot));
      resume = Math.max(resume, Number(snapshot.lastEventId) || 0);
      this.announce(job);
    }
    this.render();
    const client = new SseClient('/api/events', { lastEventId: resume });
    this.client = client;
    client.onState((state, detail) => this.showConnection(state, detail));
    client.onAny((type, data) => data && this.onEvent(type, data));
    client.start();
  }

  fromSnapshot(s) {
    return {
      status: s.status,
      stage: s.stage ?? null,
      percent: clampPercent(s.percent),
      topic: s.request?.brief?.topic ?? null,
      createdAt: parseTime(s.createdAt),
      startedAt: parseTime(s.startedAt),
      finishedAt: parseTime(s.finishedAt),
      message: '',
    };
  }

  upsert(jobId, fields) {
    const job = this.jobs.get(jobId) ?? { jobId, status: 'Queued', percent: 0, createdAt: NaN, startedAt: NaN, finishedAt: NaN };
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && !(typeof v === 'number' && Number.isNaN(v) && Number.isFinite(job[k]))) job[k] = v;
    }
    this.jobs.set(jobId, job);
    return job;
  }

  onEvent(type, d) {
    const jobId = typeof d.jobId === 'string' ? d.jobId : null;
    if (!jobId) return;
    const known = this.jobs.has(jobId);
    const at = parseTime(d.at);
    const job = this.upsert(jobId, {});
    if (!known && !Number.isFinite(job.createdAt)) job.createdAt = at;
    switch (type) {
      case 'job-status':
        job.status = String(d.status ?? job.status);
        job.stage = d.stage ?? job.stage;
        job.percent = d.status === 'Queued' ? clampPercent(d.percent) : Math.max(job.percent, clampPercent(d.percent));
        if (typeof d.request?.brief?.topic === 'string') job.topic = d.request.brief.topic;
        if (d.status === 'Queued') job.createdAt = job.createdAt || at;
        if (d.status === 'Running' && !Number.isFinite(job.startedAt)) job.startedAt = at;
        break;
      case 'step-progress':
        job.stage = d.step;
        job.percent = Math.max(job.percent, clampPercent(d.percent));
        job.message = cleanText(d.message, 120);
        break;
      case 'job-completed':
        job.status = 'Completed';
        job.percent = 100;
        job.finishedAt = at;
        break;
      case 'job-failed':
        job.status = 'Failed';
        job.finishedAt = at;
        break;
      case 'job-cancelled':
        job.status = 'Cancelled';
        job.finishedAt = at;
        break;
      default:
        break;
    }
    if (!job.topic) this.lookup(jobId);
    this.addLog(jobId, type, d);
    this.render();
    this.announce(job);
  }

  /** Tells the page (`job-updated` on `document`) what is now known of a job. */
  announce(job) {
    document.dispatchEvent(new CustomEvent('job-updated', { detail: { ...job } }));
  }

  /** Fetches a job's snapshot once, for a job the stream mentions that the list did not. */
  async lookup(jobId) {
    if (this.lookups.has(jobId)) return;
    this.lookups.add(jobId);
    try {
      const res = await fetch(jobUrl(jobId), { cache: 'no-store' });
      if (!res.ok) return;
      const snapshot = await res.json();
      const job = this.jobs.get(jobId);
      if (!job) return;
      job.topic = snapshot.request?.brief?.topic ?? job.topic;
      if (!Number.isFinite(job.startedAt)) job.startedAt = parseTime(snapshot.startedAt);
      if (!Number.isFinite(job.createdAt)) job.createdAt = parseTime(snapshot.createdAt);
      this.render();
      this.announce(job);
    } catch {
      // The topic is a nicety; the job is shown by its id meanwhile.
    }
  }

  addLog(jobId, type, d) {
    const line = el('li', { class: `log-line ${type}` },
      el('time', {}, clock(d.at)), ' ', el('code', {}, jobId.slice(0, 8)), ' ', describeEvent(type, d));
    this.log.prepend(line);
    while (this.log.children.length > MAX_LOG_LINES) this.log.lastElementChild.remove();
  }

  sortedJobs() {
    const active = (j) => !TERMINAL_STATUSES.includes(j.status);
    return [...this.jobs.values()]
      .sort((a, b) => Number(active(b)) - Number(active(a)) || (b.createdAt || 0) - (a.createdAt || 0))
      .slice(0, MAX_JOBS);
  }

  render() {
    const jobs = this.sortedJobs();
    const items = jobs.map((job) => this.item(job));
    this.list.replaceChildren(...items);
    this.empty.hidden = jobs.length > 0;
    const active = jobs.filter((j) => !TERMINAL_STATUSES.includes(j.status)).length;
    this.badge.textContent = String(active);
    this.renderTimes();
  }

  item(job) {
    const fill = el('span', { class: 'fill' });
    fill.style.width = `${job.percent}%`;
    const title = job.topic ? cleanText(job.topic, 80) : `Job ${job.jobId.slice(0, 8)}`;
    const link = el('a', { href: `/jobs/${encodeURIComponent(job.jobId)}`, class: 'job-link' }, title);
    const li = el('li', { class: 'drawer-job', 'data-job-id': job.jobId, 'data-status': job.status },
      el('div', { class: 'job-line' }, link, el('span', { class: `pill ${job.status}` }, job.status)),
      el('div', {
        class: 'bar mini', role: 'progressbar', 'aria-label': `${title} progress`,
        'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(job.percent),
      }, fill),
      el('div', { class: 'job-meta' },
        el('span', { class: 'job-progress' }, `${job.percent}%${job.stage && !TERMINAL_STATUSES.includes(job.status) ? ` · ${job.stage}` : ''}`),
        el('span', { class: 'job-times', 'data-times': job.jobId })));
    if (!TERMINAL_STATUSES.includes(job.status) && job.status !== 'Cancelling') {
      const cancel = el('button', { type: 'button', class: 'link danger' }, 'Cancel');
      cancel.addEventListener('click', () => this.askCancel(job.jobId, title));
      li.querySelector('.job-meta').append(cancel);
    }
    return li;
  }

  renderTimes() {
    const now = Date.now();
    for (const span of this.list.querySelectorAll('[data-times]')) {
      const job = this.jobs.get(span.dataset.times);
      if (!job) continue;
      if (!Number.isFinite(job.startedAt)) {
        span.textContent = job.status === 'Queued' ? 'waiting' : '';
        continue;
      }
      const end = TERMINAL_STATUSES.includes(job.status) && Number.isFinite(job.finishedAt) ? job.finishedAt : now;
      const elapsed = Math.max(0, (end - job.startedAt) / 1000);
      const left = TERMINAL_STATUSES.includes(job.status) ? NaN : estimateRemaining(elapsed, job.percent);
      span.textContent = `${formatDuration(elapsed)}${Number.isFinite(left) ? ` · ~${formatDuration(left)} left` : ''}`;
    }
  }

  askCancel(jobId, title) {
    this.pendingCancel = jobId;
    this.dialogText.textContent = `“${title}” stops and cannot be resumed.`;
    this.dialog.showModal();
  }

  async cancel(jobId) {
    try {
      const res = await fetch(`${jobUrl(jobId)}/cancel`, { method: 'POST' });
      if (!res.ok && res.status !== 409) this.addLog(jobId, 'error', { code: 'cancel', message: `cancel answered ${res.status}` });
    } catch {
      this.addLog(jobId, 'error', { code: 'cancel', message: 'the server cannot be reached' });
    }
  }

  showConnection(state, detail) {
    this.dataset.connection = state;
    const text = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', disconnected: 'Disconnected', done: 'Ended' };
    this.conn.textContent = text[state] ?? state;
    this.conn.dataset.state = state;
    this.retryButton.hidden = state !== 'disconnected';
    if (detail?.reason) this.conn.title = detail.reason;
  }
}

if (!customElements.get('job-progress-drawer')) customElements.define('job-progress-drawer', JobProgressDrawer);
