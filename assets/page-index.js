// The home page: the new-job form (server validation shown next to each field) and the job list.

import './sign-in.js';
import './job-progress-drawer.js';
import { TERMINAL_STATUSES, clampPercent, cleanText, el, parseTime } from './format.js';

const form = document.getElementById('job-form');
const formError = document.getElementById('form-error');
const formStatus = document.getElementById('form-status');
const submit = document.getElementById('submit');
const list = document.getElementById('job-list');
const empty = document.getElementById('jobs-empty');

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

// --- The job list: read once, then kept current by the drawer's stream (no second stream).

const rows = new Map();

function renderRow(job) {
  const topic = job.topic ?? job.request?.brief?.topic;
  const title = topic ? cleanText(topic, 100) : `Job ${String(job.jobId).slice(0, 8)}`;
  const created = typeof job.createdAt === 'number' ? job.createdAt : parseTime(job.createdAt);
  const when = Number.isFinite(created) ? new Date(created).toLocaleString() : '';
  const pct = clampPercent(job.percent);
  const row = el('li', { class: 'job-row', 'data-job-id': job.jobId, 'data-status': job.status },
    el('a', { href: `/jobs/${encodeURIComponent(job.jobId)}` }, title),
    el('span', { class: `pill ${job.status}` }, job.status),
    el('span', { class: 'muted' }, TERMINAL_STATUSES.includes(job.status) ? when : `${pct}%`));
  const old = rows.get(job.jobId);
  if (old) old.replaceWith(row);
  else list.prepend(row);
  rows.set(job.jobId, row);
  empty.hidden = rows.size > 0;
}

async function loadJobs() {
  try {
    const res = await fetch('/api/jobs?limit=50', { cache: 'no-store' });
    if (!res.ok) return;
    const page = await res.json();
    for (const job of [...(page.jobs ?? [])].reverse()) renderRow(job);
  } catch {
    empty.textContent = 'The job list cannot be read right now.';
  }
}

document.addEventListener('job-updated', (event) => {
  renderRow(event.detail);
});

loadJobs();
