// The example page: start and reset monitoring of any job, and report the element's DOM events.

import './sign-in.js';
import './video-generation-progress.js';
import { asJobId, cleanText, el } from './format.js';

const form = document.getElementById('monitor-form');
const input = document.getElementById('job-id-input');
const slot = document.getElementById('example-slot');
const success = document.getElementById('example-success');
const failure = document.getElementById('example-error');

function say(node, text) {
  success.hidden = true;
  failure.hidden = true;
  if (!node) return;
  node.textContent = text;
  node.hidden = false;
}

function reset() {
  slot.replaceChildren();
  say(null);
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const jobId = asJobId(input.value);
  if (!jobId) {
    say(failure, 'That is not a job id: a job id is a UUID such as 01234567-89ab-7cde-8f01-23456789abcd.');
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  input.removeAttribute('aria-invalid');
  reset();
  const progress = el('video-generation-progress', { 'job-id': jobId });
  progress.addEventListener('job-complete', (e) => say(success, `Done: the video is at ${cleanText(e.detail.videoUrl, 200)}.`));
  progress.addEventListener('job-failed', (e) => say(failure, `The job failed: ${e.detail.code}: ${e.detail.message}`));
  progress.addEventListener('job-cancelled', () => say(failure, 'The job was cancelled.'));
  slot.append(progress);
});

document.getElementById('reset').addEventListener('click', () => {
  reset();
  input.value = '';
  input.removeAttribute('aria-invalid');
  input.focus();
});

const fromQuery = new URLSearchParams(location.search).get('jobId');
if (fromQuery) {
  input.value = fromQuery;
  form.requestSubmit();
}

const copyStatus = document.getElementById('copy-status');
document.getElementById('copy-code').addEventListener('click', async () => {
  const text = document.getElementById('code-sample').textContent;
  try {
    await navigator.clipboard.writeText(text);
    copyStatus.textContent = 'Copied.';
  } catch {
    const range = document.createRange();
    range.selectNodeContents(document.getElementById('code-sample'));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    copyStatus.textContent = 'Selected: press Ctrl+C to copy.';
  }
});
