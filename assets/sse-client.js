// A resumable Server-Sent Events client around the browser's EventSource.
//
// - Handles every event id once: an id at or below the last one handled is dropped.
// - While EventSource reconnects by itself (readyState CONNECTING) it sends Last-Event-ID, and
//   the state is "reconnecting".
// - When the browser gives up (readyState CLOSED: a non-200 answer or a failed connection),
//   the client reopens with `?lastEventId=<last>` after 3 s, doubling each time, at most 5
//   tries, then reports "disconnected" and waits for `retry()` (a Retry button).
// - For one job's stream, a 204 means "the job is over and you have everything". EventSource
//   reports it exactly like a failure (error, CLOSED), so the client asks the job snapshot:
//   terminal with no event past ours means "done"; anything else is a failure.
// - After the job's terminal event the server ends the response; the client then reconnects at
//   once from its last id, and the server's 204 confirms the end.
// - When EventSource fails to open three times in a row (a proxy or network that strips
//   `text/event-stream`, or refuses it), the client falls back to the WebSocket at `/api/ws`
//   (same events, same ids; `?lastEventId=` resumes) and stays on it. A job socket's normal
//   close (1000) means the job is over and everything was handled: "done". Any other close is
//   retried with the same backoff.
//
// States: connecting → live → (reconnecting → live)* → done | disconnected.

export const EVENT_TYPES = [
  'job-status',
  'step-status',
  'step-progress',
  'job-completed',
  'job-failed',
  'job-cancelled',
  'warning',
  'error',
];

const TERMINAL = new Set(['job-completed', 'job-failed', 'job-cancelled']);
const TERMINAL_STATUS = new Set(['Completed', 'Failed', 'Cancelled']);

export class SseClient {
  /**
   * @param {string} url the stream, e.g. `/api/jobs/<id>/events` or `/api/events`
   * @param {object} options
   * @param {string} [options.snapshotUrl] the job snapshot, for one job's stream: enables 204 detection
   * @param {number} [options.lastEventId] resume point of the first request (default 0: everything)
   * @param {number} [options.baseDelayMs] first backoff delay (default 3000)
   * @param {number} [options.maxTries] reconnect attempts before "disconnected" (default 5)
   * @param {number} [options.fallbackAfter] failed opens of EventSource in a row before the WebSocket (default 3)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.snapshotUrl = options.snapshotUrl ?? null;
    this.lastId = Number(options.lastEventId) || 0;
    this.baseDelayMs = options.baseDelayMs ?? 3000;
    this.maxTries = options.maxTries ?? 5;
    this.fallbackAfter = options.fallbackAfter ?? 3;
    this.failedOpens = 0;
    this.transport = 'sse';
    this.handledIds = [];
    this.state = 'idle';
    this.detail = null;
    this.tries = 0;
    this.source = null;
    this.timer = null;
    this.stopped = true;
    this.terminalSeen = false;
    this.listeners = new Map();
    this.stateListeners = new Set();
    this.anyListeners = new Set();
  }

  /** Listens to every handled event; the handler gets `(type, data, id)`, data null if unreadable. */
  onAny(handler) {
    this.anyListeners.add(handler);
    return () => this.anyListeners.delete(handler);
  }

  /** Listens to one event type; the handler gets `(data, id)`. Returns an unsubscribe function. */
  on(type, handler) {
    if (!EVENT_TYPES.includes(type)) throw new Error(`unknown event type ${type}`);
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(handler);
    return () => this.listeners.get(type)?.delete(handler);
  }

  /** Listens to state changes; the handler gets `(state, detail)`. */
  onState(handler) {
    this.stateListeners.add(handler);
    return () => this.stateListeners.delete(handler);
  }

  start() {
    this.stopped = false;
    this.open(this.lastId > 0 ? 'reconnecting' : 'connecting');
  }

  /** Starts again after "disconnected" (the Retry button). */
  retry() {
    if (this.state === 'done') return;
    this.tries = 0;
    this.stopped = false;
    this.clearTimer();
    this.open('reconnecting');
  }

  /** Stops for good; no state change is reported after this. */
  close() {
    this.stopped = true;
    this.clearTimer();
    this.source?.close();
    this.source = null;
  }

  /** Opens the stream from the last handled id; `state` null keeps the reported state as it is. */
  open(state) {
    this.source?.close();
    if (state) this.setState(state);
    if (this.transport === 'ws') {
      this.openSocket();
      return;
    }
    const url = new URL(this.url, location.href);
    if (this.lastId > 0) url.searchParams.set('lastEventId', String(this.lastId));
    const source = new EventSource(url.pathname + url.search);
    this.source = source;
    source.onopen = () => {
      if (source !== this.source) return;
      source.opened = true;
      this.failedOpens = 0;
      this.tries = 0;
      if (this.state !== 'live') this.setState('live');
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        if (source === this.source) this.handle(type, event);
      });
    }
    source.onerror = () => {
      if (source === this.source && !this.stopped) this.failed(source);
    };
  }

  /** The WebSocket twin of this stream: `/api/ws` with the same jobs, from the last handled id. */
  socketUrl() {
    const from = new URL(this.url, location.href);
    const to = new URL('/api/ws', from);
    to.protocol = from.protocol === 'https:' ? 'wss:' : 'ws:';
    const job = from.pathname.match(/^\/api\/jobs\/([^/]+)\/events$/);
    if (job) to.searchParams.append('jobId', decodeURIComponent(job[1]));
    for (const [key, value] of from.searchParams) {
      if (key !== 'lastEventId') to.searchParams.append(key, value);
    }
    to.searchParams.set('lastEventId', String(this.lastId));
    return to.href;
  }

  /** Opens the WebSocket; each text message with an id is an event. */
  openSocket() {
    const socket = new WebSocket(this.socketUrl());
    // `close()` on the socket is what `close()` on an EventSource is; the rest is the same shape.
    this.source = socket;
    socket.onopen = () => {
      if (socket !== this.source) return;
      this.tries = 0;
      if (this.state !== 'live') this.setState('live', { transport: 'websocket' });
    };
    socket.onmessage = (message) => {
      if (socket !== this.source) return;
      let parsed;
      try {
        parsed = JSON.parse(message.data);
      } catch {
        return;
      }
      // Replies to our own messages (`error`, `pong`) carry no id.
      if (parsed && Number.isSafeInteger(parsed.id) && EVENT_TYPES.includes(parsed.type)) {
        this.deliver(parsed.type, parsed.id, parsed.data);
      }
    };
    socket.onclose = (event) => {
      if (socket !== this.source || this.stopped) return;
      this.source = null;
      if (event.code === 1000 && this.snapshotUrl) {
        this.setState('done');
        return;
      }
      this.scheduleRetry();
    };
  }

  handle(type, event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      data = null;
    }
    this.deliver(type, Number(event.lastEventId), data);
  }

  /** Hands one event to the listeners, unless its id was handled already. */
  deliver(type, id, data) {
    // Ids only grow, on one job's stream and on the all-jobs stream alike.
    if (!Number.isSafeInteger(id) || id <= this.lastId) return;
    this.lastId = id;
    this.handledIds.push(id);
    if (TERMINAL.has(type)) this.terminalSeen = true;
    const ok = data !== null && typeof data === 'object';
    const handlers = [...this.anyListeners].map((h) => () => h(type, ok ? data : null, id));
    if (ok) handlers.push(...[...(this.listeners.get(type) ?? [])].map((h) => () => h(data, id)));
    for (const run of handlers) {
      try {
        run();
      } catch (err) {
        console.error('event handler failed', err);
      }
    }
  }

  async failed(source) {
    if (source.readyState === EventSource.CONNECTING) {
      if (this.snapshotUrl && this.terminalSeen) {
        // The server ended the response after the terminal event: confirm the end now (the
        // answer is a 204) instead of waiting for the browser's retry interval. The state stays
        // "live" until the 204 makes it "done".
        this.open(null);
      } else {
        this.setState('reconnecting', { by: 'browser' });
      }
      return;
    }
    // CLOSED: the browser gave up. A 204, a refusal, or the server is unreachable.
    source.close();
    this.source = null;
    if (this.snapshotUrl) {
      const verdict = await this.checkSnapshot();
      if (this.stopped) return;
      if (verdict === 'done') {
        this.setState('done');
        return;
      }
      if (verdict === 'missing') {
        this.setState('disconnected', { reason: 'This job does not exist.', final: true });
        return;
      }
      if (verdict === 'behind') {
        this.open('reconnecting');
        return;
      }
    }
    if (!source.opened) this.failedOpens += 1;
    if (this.failedOpens >= this.fallbackAfter && typeof WebSocket === 'function') {
      // EventSource cannot get through here: the WebSocket carries the same events.
      this.transport = 'ws';
      this.open('reconnecting');
      return;
    }
    this.scheduleRetry();
  }

  /** What the job snapshot says about a closed stream: done, behind, missing or unknown. */
  async checkSnapshot() {
    try {
      const res = await fetch(this.snapshotUrl, { headers: { accept: 'application/json' }, cache: 'no-store' });
      if (res.status === 404) return 'missing';
      if (!res.ok) return 'unknown';
      const job = await res.json();
      if (!TERMINAL_STATUS.has(job.status)) return 'unknown';
      return Number(job.lastEventId) <= this.lastId ? 'done' : 'behind';
    } catch {
      return 'unknown';
    }
  }

  scheduleRetry() {
    if (this.tries >= this.maxTries) {
      this.setState('disconnected', { reason: 'The server cannot be reached.' });
      return;
    }
    const delay = this.baseDelayMs * 2 ** this.tries;
    this.tries += 1;
    this.setState('reconnecting', { attempt: this.tries, of: this.maxTries, inMs: delay });
    this.clearTimer();
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopped) this.open('reconnecting');
    }, delay);
  }

  clearTimer() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  setState(state, detail = null) {
    if (state === 'done' || state === 'disconnected') {
      this.source?.close();
      this.source = null;
    }
    this.state = state;
    this.detail = detail;
    for (const handler of this.stateListeners) {
      try {
        handler(state, detail);
      } catch (err) {
        console.error('state handler failed', err);
      }
    }
  }
}
