// Small shared helpers for the UI: the stage list, time formatting and safe DOM building.
// Every string that came from the server goes into the page through `textContent` only.

export const STAGES = ['Script', 'Audio', 'Visuals', 'Timeline', 'Render'];
export const TERMINAL_STATUSES = ['Completed', 'Failed', 'Cancelled'];
export const TERMINAL_EVENTS = ['job-completed', 'job-failed', 'job-cancelled'];

/** Builds an element with attributes and children; strings become text nodes, never HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** `1:05`, `12:03:09` from seconds. */
export function formatDuration(totalSeconds) {
  if (!Number.isFinite(totalSeconds) || totalSeconds < 0) return '–';
  const s = Math.floor(totalSeconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

/** A percent clamped to 0..100 with at most one decimal. */
export function clampPercent(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return 0;
  return Math.round(Math.min(100, Math.max(0, n)) * 10) / 10;
}

/** Milliseconds since the epoch from an RFC 3339 string, or NaN. */
export function parseTime(value) {
  return typeof value === 'string' ? Date.parse(value) : NaN;
}

/** Seconds left at the current average speed, or NaN when it cannot be told yet. */
export function estimateRemaining(elapsedSec, percent) {
  if (!(percent > 0.5) || percent >= 100 || !(elapsedSec > 0)) return NaN;
  return (elapsedSec * (100 - percent)) / percent;
}

/** A short, printable version of a server message: no control characters, bounded length. */
export function cleanText(value, max = 300) {
  // eslint-disable-next-line no-control-regex
  const text = String(value ?? '').replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** The same-origin path of a job's rendered video. */
export function outputUrl(jobId) {
  return `/api/jobs/${encodeURIComponent(jobId)}/output`;
}

export function jobUrl(jobId) {
  return `/api/jobs/${encodeURIComponent(jobId)}`;
}

/** A UUID in its canonical text form, or null. */
export function asJobId(value) {
  const text = String(value ?? '').trim().toLowerCase();
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(text) ? text : null;
}

/** The clock time of an event, `15:04:05`. */
export function clock(at) {
  const t = parseTime(at);
  if (!Number.isFinite(t)) return '';
  return new Date(t).toLocaleTimeString([], { hour12: false });
}

/** One readable line for an event, for logs. */
export function describeEvent(type, data) {
  switch (type) {
    case 'job-status':
      return `${data.status ?? ''}${data.stage ? ` · ${data.stage}` : ''} · ${clampPercent(data.percent)}%`;
    case 'step-status':
      return `${data.step} ${String(data.state ?? '').toLowerCase()}`;
    case 'step-progress':
      return `${data.step} ${clampPercent(data.progressPct)}% · ${cleanText(data.message, 120)}`;
    case 'job-completed':
      return `completed · ${formatDuration(Number(data.output?.durationSec))} video`;
    case 'job-failed':
      return `failed${data.step ? ` in ${data.step}` : ''}: ${cleanText(data.error?.code, 60)} ${cleanText(data.error?.message, 160)}`;
    case 'job-cancelled':
      return `cancelled${data.step ? ` in ${data.step}` : ''}`;
    case 'warning':
    case 'error':
      return `${type}: ${cleanText(data.code, 60)} ${cleanText(data.message, 160)}`;
    default:
      return type;
  }
}
