// The home page: the new-job form (server validation shown next to each field) and the live job list.

import './sign-in.js';
import './job-progress-drawer.js';
import {
  TERMINAL_STATUSES,
  clampPercent,
  cleanText,
  el,
  estimateRemaining,
  formatDuration,
  outputUrl,
  parseTime,
} from './format.js';

const form = document.getElementById('job-form');
const formError = document.getElementById('form-error');
const formStatus = document.getElementById('form-status');
const submit = document.getElementById('submit');
const list = document.getElementById('job-list');
const empty = document.getElementById('jobs-empty');
const jobsSection = document.getElementById('jobs');

/** The request body from the form: nested by each field's dotted name. */
function requestBody() {
  const body = {};
  for (const field of form.querySelectorAll('input[name], select[name]')) {
    const [group, key] = field.name.split('.');
    let value = field.value;
    if (field.dataset.kind === 'number') {
      if (value.trim() === '') continue; // empty: the server applies the default
      value = Number(value);
    }
    (body[group] ??= {})[key] = value;
  }
  return body;
}

function clearErrors() {
  formError.hidden = true;
  formError.replaceChildren();
  for (const node of form.querySelectorAll('.field-error')) node.remove();
  for (const field of form.querySelectorAll('[aria-invalid]')) {
    field.removeAttribute('aria-invalid');
    const ids = (field.getAttribute('aria-describedby') ?? '').split(' ').filter((id) => !id.startsWith('e-'));
    if (ids.length) field.setAttribute('aria-describedby', ids.join(' '));
    else field.removeAttribute('aria-describedby');
  }
}

/** Shows each `errors[]` item next to the field it names; the rest above the form. */
function showProblem(problem) {
  const unplaced = [];
  let first = null;
  for (const item of Array.isArray(problem.errors) ? problem.errors : []) {
    // `field` is the dotted path (brief.topic); `pointer` the same as a JSON Pointer (/brief/topic).
    const fromPointer = typeof item.pointer === 'string' ? item.pointer.replace(/^\//, '').split('/').join('.') : '';
    const name = typeof item.field === 'string' ? item.field : fromPointer;
    const field = name ? document.getElementById(`f-${name}`) : null;
    const detail = cleanText(item.detail, 300);
    if (!field) {
      unplaced.push(`${cleanText(name, 80)} ${detail}`);
      continue;
    }
    const id = `e-${name}`;
    const message = el('p', { class: 'field-error', id }, detail);
    field.closest('.field').append(message);
    field.setAttribute('aria-invalid', 'true');
    field.setAttribute('aria-describedby', `${id} ${field.getAttribute('aria-describedby') ?? ''}`.trim());
    first ??= field;
  }
  if (unplaced.length || !first) {
    formError.replaceChildren(el('strong', {}, cleanText(problem.title ?? 'The job was not created', 120)));
    const lines = unplaced.length ? unplaced : [cleanText(problem.detail ?? '', 300)];
    for (const line of lines) formError.append(el('p', {}, line));
    formError.hidden = false;
  }
  (first ?? formError).focus?.();
  if (!first) formError.scrollIntoView?.({ block: 'nearest' });
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  clearErrors();
  submit.disabled = true;
  formStatus.textContent = 'Creating…';
  try {
    const res = await fetch('/api/jobs', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(requestBody()),
    });
    const body = await res.json().catch(() => ({}));
    if (res.status === 201 && typeof body.jobId === 'string') {
      formStatus.textContent = 'Created. Opening the job…';
      location.assign(`/jobs/${encodeURIComponent(body.jobId)}`);
      return;
    }
    formStatus.textContent = '';
    showProblem({ title: `The server answered ${res.status}`, ...body });
  } catch {
    formStatus.textContent = '';
    showProblem({ title: 'The server cannot be reached', detail: 'Check that Aura is running and try again.' });
  }
  submit.disabled = false;
});

// --- The job list: read once, then kept current by the drawer's one `/api/events` stream (no
// second stream). Every row has a <progress> bar, the status, the stage, the time left while the
// job runs and a Download link once it has completed. Running and queued jobs come first, newest
// first within each group. A job created anywhere (CLI, curl, another tab) arrives on the stream.
// The list stands above the form, where people look first, and is hidden while there is no job.

const jobs = new Map(); // jobId -> { jobId, topic, status, stage, percent, createdAt, startedAt, finishedAt }
const rowsById = new Map(); // jobId -> { row, parts }

const isActive = (job) => !TERMINAL_STATUSES.includes(job.status);

/** A job from either an API snapshot or the drawer's `job-updated` detail. */
function normalize(raw) {
  const time = (v) => (typeof v === 'number' ? v : parseTime(v));
  return {
    jobId: String(raw.jobId),
    topic: raw.topic ?? raw.request?.brief?.topic ?? null,
    status: String(raw.status ?? 'Queued'),
    stage: raw.stage ?? null,
    percent: clampPercent(raw.percent),
    createdAt: time(raw.createdAt),
    startedAt: time(raw.startedAt),
    finishedAt: time(raw.finishedAt),
  };
}

/** Merges what is known: a field the update lacks keeps its old value. */
function upsert(raw, { onlyIfNew = false } = {}) {
  const next = normalize(raw);
  const old = jobs.get(next.jobId);
  if (old && onlyIfNew) return;
  const merged = { ...old };
  for (const [key, value] of Object.entries(next)) {
    const missing = value === null || value === undefined || (typeof value === 'number' && Number.isNaN(value));
    if (!missing || !(key in merged)) merged[key] = value;
  }
  jobs.set(next.jobId, merged);
  renderRow(merged);
  order();
}

function buildRow(job) {
  const parts = {
    link: el('a', { href: `/jobs/${encodeURIComponent(job.jobId)}`, class: 'job-title' }),
    status: el('span', { class: 'pill job-status' }),
    progress: el('progress', { max: '100', value: '0', class: 'job-progress' }),
    percent: el('span', { class: 'job-percent' }),
    stage: el('span', { class: 'job-stage' }),
    eta: el('span', { class: 'job-eta' }),
    when: el('span', { class: 'job-when muted' }),
    download: el('a', { class: 'job-download', download: '', hidden: true }, 'Download'),
  };
  const row = el('li', { class: 'job-row', 'data-job-id': job.jobId },
    el('div', { class: 'job-row-head' }, parts.link, parts.status),
    parts.progress,
    el('div', { class: 'job-row-meta' }, parts.percent, parts.stage, parts.eta, parts.when, parts.download));
  return { row, parts };
}

function renderRow(job) {
  let entry = rowsById.get(job.jobId);
  if (!entry) {
    entry = buildRow(job);
    rowsById.set(job.jobId, entry);
  }
  const { row, parts } = entry;
  const title = job.topic ? cleanText(job.topic, 100) : `Job ${job.jobId.slice(0, 8)}`;
  row.dataset.status = job.status;
  row.dataset.percent = String(job.percent);
  parts.link.textContent = title;
  parts.status.className = `pill job-status ${job.status}`;
  parts.status.textContent = job.status;
  parts.progress.value = job.percent;
  parts.progress.textContent = `${job.percent}%`;
  parts.progress.setAttribute('aria-label', `${title}: ${job.percent}%`);
  parts.percent.textContent = `${job.percent}%`;
  parts.stage.textContent = job.stage && isActive(job) && job.status !== 'Queued' ? job.stage : '';
  const completed = job.status === 'Completed';
  parts.download.hidden = !completed;
  if (completed) parts.download.setAttribute('href', outputUrl(job.jobId));
  else parts.download.removeAttribute('href');
  renderTimes(job, parts);
}

/** ETA while running, "waiting" while queued, the finish time once ended. */
function renderTimes(job, parts) {
  if (job.status === 'Queued') {
    parts.eta.textContent = 'waiting';
  } else if (isActive(job) && Number.isFinite(job.startedAt)) {
    const elapsed = Math.max(0, (Date.now() - job.startedAt) / 1000);
    const left = estimateRemaining(elapsed, job.percent);
    parts.eta.textContent = Number.isFinite(left) ? `about ${formatDuration(left)} left` : 'estimating…';
  } else {
    parts.eta.textContent = '';
  }
  const at = isActive(job) ? job.createdAt : job.finishedAt;
  parts.when.textContent = !isActive(job) && Number.isFinite(at) ? new Date(at).toLocaleString() : '';
}

/** Active jobs first, newest first within each group. Moves only rows that are out of place. */
function order() {
  const sorted = [...jobs.values()].sort(
    (a, b) => Number(isActive(b)) - Number(isActive(a)) || (b.createdAt || 0) - (a.createdAt || 0),
  );
  sorted.forEach((job, i) => {
    const { row } = rowsById.get(job.jobId);
    if (list.children[i] !== row) list.insertBefore(row, list.children[i] ?? null);
  });
  empty.hidden = jobs.size > 0;
  jobsSection.hidden = jobs.size === 0;
}

async function loadJobs() {
  try {
    const res = await fetch('/api/jobs?limit=50', { cache: 'no-store' });
    if (!res.ok) return;
    const page = await res.json();
    // The stream may already have told of a job: what it said is newer than this read.
    for (const job of page.jobs ?? []) upsert(job, { onlyIfNew: true });
  } catch {
    empty.textContent = 'The job list cannot be read right now.';
    jobsSection.hidden = false;
  }
}

document.addEventListener('job-updated', (event) => upsert(event.detail));

setInterval(() => {
  for (const job of jobs.values()) {
    if (isActive(job)) renderTimes(job, rowsById.get(job.jobId).parts);
  }
}, 1000);

loadJobs();
