// Replay of a finished job: re-enacts its run on the page's <video-generation-progress> from the
// events Aura already stores, read with GET /api/jobs/{id}/history (paged with after= and
// limit=; no stream is opened). A scrubber jumps to any event, play/pause runs the events at
// their recorded pace (1×, 10×) or as fast as the page can draw them, and a log lists every event
// up to the current one. Stages, bars, messages, elapsed time and ETA are what they were at that
// moment, because each event goes through the same `apply()` as a live one and the element's clock
// is set to the event's `at`.
//
// For tests the panel carries `data-state` (`loading`, `playing`, `paused`, `ended`, `failed`)
// and `data-position` (events applied).

import { clock, describeEvent, el, formatDuration, parseTime } from './format.js';

/** Events per history request. */
export const PAGE_SIZE = 100;
/** The most history pages read: a bound on the loop, far above any job's events. */
const MAX_PAGES = 10000;
/** The longest real wait between two steps of the replay clock, in milliseconds. */
const CLOCK_STEP_MS = 100;
/** Events drawn per frame when playing as fast as possible. */
const BURST = 25;

export const SPEEDS = [
  { value: '1', label: '1×', factor: 1 },
  { value: '10', label: '10×', factor: 10 },
  { value: 'max', label: 'As fast as possible', factor: Infinity },
];

/** Every stored event of a job, in id order: `{id, type, data, at}` (`at` in ms). */
export async function fetchHistory(jobId, pageSize = PAGE_SIZE) {
  const events = [];
  let after = 0;
  for (let page = 0; page < MAX_PAGES; page += 1) {
    const url = `/api/jobs/${encodeURIComponent(jobId)}/history?after=${after}&limit=${pageSize}`;
    const res = await fetch(url, { cache: 'no-store' });
    if (!res.ok) throw new Error(`the history answered ${res.status}`);
    const items = await res.json();
    if (!Array.isArray(items)) throw new Error('the history is not a list');
    for (const item of items) {
      const id = Number(item?.id);
      if (!Number.isSafeInteger(id) || id <= after) continue;
      after = id;
      if (item.data && typeof item.data === 'object') {
        events.push({ id, type: String(item.type), data: item.data, at: parseTime(item.data.at) });
      }
    }
    if (items.length < pageSize) break;
  }
  return events;
}

export class JobReplay {
  /**
   * @param {HTMLElement} progress the page's <video-generation-progress>
   * @param {string} jobId
   */
  constructor(progress, jobId) {
    this.progress = progress;
    this.jobId = jobId;
    this.events = [];
    this.position = 0;
    this.playing = false;
    this.timer = null;
    this.clockMs = NaN;
    this.panel = this.build();
  }

  build() {
    this.play = el('button', { type: 'button', class: 'replay-play', disabled: true }, 'Play');
    this.play.addEventListener('click', () => (this.playing ? this.pause() : this.start()));
    this.scrubber = el('input', {
      type: 'range', min: '0', max: '0', step: '1', value: '0', class: 'replay-scrubber',
      'aria-label': 'Replay position (events)', disabled: true,
    });
    this.scrubber.addEventListener('input', () => this.seek(Number(this.scrubber.value)));
    this.speed = el('select', { class: 'replay-speed', 'aria-label': 'Replay speed' },
      ...SPEEDS.map((s) => el('option', { value: s.value, selected: s.value === '10' }, s.label)));
    this.where = el('span', { class: 'replay-where muted', 'aria-live': 'off' });
    const exit = el('button', { type: 'button', class: 'secondary replay-exit' }, 'Back to live view');
    exit.addEventListener('click', () => this.close());
    this.log = el('ol', { class: 'replay-log', role: 'log', 'aria-label': 'Replayed events' });
    const panel = el('section', { class: 'card replay', 'aria-label': 'Replay', 'data-state': 'loading' },
      el('h2', {}, 'Replay'),
      el('p', { class: 'muted' }, 'The run again, from the events Aura stored: nothing is rendered again.'),
      el('div', { class: 'replay-controls' }, this.play, this.scrubber, this.speed, exit),
      this.where,
      this.log);
    return panel;
  }

  setState(state) {
    this.panel.dataset.state = state;
    this.panel.dataset.position = String(this.position);
  }

  /** Reads the history and shows the job as it was before its first event. */
  async open() {
    this.setState('loading');
    this.where.textContent = 'Reading the stored events…';
    try {
      this.events = await fetchHistory(this.jobId);
    } catch (err) {
      this.where.textContent = `The events cannot be read: ${err.message}`;
      this.setState('failed');
      return;
    }
    this.scrubber.max = String(this.events.length);
    this.scrubber.disabled = this.events.length === 0;
    this.play.disabled = this.events.length === 0;
    this.progress.beginReplay();
    this.seek(0);
  }

  /** Shows the job as it was right after its first `k` events. */
  seek(k) {
    const n = Math.max(0, Math.min(this.events.length, Math.floor(k) || 0));
    this.progress.beginReplay();
    const lines = [];
    for (let i = 0; i < n; i += 1) {
      const e = this.events[i];
      this.progress.apply(e.type, e.data, e.id);
      lines.push(this.line(e));
    }
    this.log.replaceChildren(...lines);
    this.position = n;
    this.clockMs = n > 0 ? this.events[n - 1].at : this.events[0]?.at ?? NaN;
    this.progress.setReplayClock(this.clockMs);
    this.showPosition();
    if (!this.playing) this.setState(n === this.events.length && n > 0 ? 'ended' : 'paused');
  }

  line(e) {
    return el('li', { class: `log-line ${e.type}` }, el('time', {}, clock(e.data.at)), ' ', describeEvent(e.type, e.data));
  }

  /** Applies the next event. */
  step() {
    const e = this.events[this.position];
    this.progress.apply(e.type, e.data, e.id);
    this.log.append(this.line(e));
    this.log.lastElementChild?.scrollIntoView?.({ block: 'nearest' });
    this.position += 1;
    this.clockMs = Math.max(this.clockMs, e.at);
    this.progress.setReplayClock(this.clockMs);
    this.showPosition();
  }

  showPosition() {
    const n = this.events.length;
    this.scrubber.value = String(this.position);
    this.scrubber.setAttribute('aria-valuetext', `event ${this.position} of ${n}`);
    const first = this.events[0]?.at;
    const last = this.events[n - 1]?.at;
    const span = (t) => (Number.isFinite(t) && Number.isFinite(first) ? formatDuration((t - first) / 1000) : '–');
    this.where.textContent = `Event ${this.position} of ${n} · ${span(this.clockMs)} of ${span(last)}`;
    this.panel.dataset.position = String(this.position);
  }

  factor() {
    return SPEEDS.find((s) => s.value === this.speed.value)?.factor ?? 1;
  }

  start() {
    if (this.position >= this.events.length) this.seek(0);
    this.playing = true;
    this.play.textContent = 'Pause';
    this.play.setAttribute('aria-pressed', 'true');
    this.setState('playing');
    this.schedule(0);
  }

  pause() {
    this.playing = false;
    clearTimeout(this.timer);
    this.timer = null;
    this.play.textContent = 'Play';
    this.play.setAttribute('aria-pressed', 'false');
    this.setState(this.position >= this.events.length ? 'ended' : 'paused');
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.advance(), ms);
  }

  /** One turn of the player: moves the replay clock, applies every event it has reached. */
  advance() {
    if (!this.playing) return;
    const factor = this.factor();
    if (factor === Infinity) {
      for (let i = 0; i < BURST && this.position < this.events.length; i += 1) this.step();
    } else {
      const next = this.events[this.position];
      const wait = Number.isFinite(next?.at) && Number.isFinite(this.clockMs) ? (next.at - this.clockMs) / factor : 0;
      if (wait > 0) {
        // Not there yet: let the clock run (elapsed and ETA move as they did) and come back.
        const real = Math.min(wait, CLOCK_STEP_MS);
        this.clockMs = Math.min(next.at, this.clockMs + real * factor);
        this.progress.setReplayClock(this.clockMs);
        this.showPosition();
        this.schedule(real);
        return;
      }
      this.step();
    }
    if (this.position >= this.events.length) this.pause();
    else this.schedule(0);
  }

  close() {
    this.pause();
    this.panel.remove();
    this.progress.endReplay();
    this.onClose?.();
  }
}
