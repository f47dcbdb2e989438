// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, so the
// feed is read from a ReadableStream and parsed here (the WHATWG event-stream format), and
// reconnected with exponential backoff and jitter after any drop.

/** Incremental event-stream parser: push text chunks, get {event, data, id} messages. */
export class SseParser {
  constructor(onMessage, onRetry = () => {}) {
    this.onMessage = onMessage;
    this.onRetry = onRetry;
    this.buffer = "";
    this.event = "";
    this.data = [];
    this.lastId = null;
    this.sawComment = false;
  }

  push(chunk) {
    this.buffer += chunk;
    // A line ends at CRLF, LF or CR; keep a trailing CR until the next chunk decides.
    const re = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    let m;
    while ((m = re.exec(this.buffer)) !== null) {
      this.line(this.buffer.slice(start, m.index));
      start = m.index + m[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(text) {
    if (text === "") {
      if (this.data.length) {
        this.onMessage({ event: this.event || "message", data: this.data.join("\n"), id: this.lastId });
      }
      this.event = "";
      this.data = [];
      return;
    }
    if (text.startsWith(":")) {
      this.sawComment = true;
      return;
    }
    const i = text.indexOf(":");
    const field = i < 0 ? text : text.slice(0, i);
    let value = i < 0 ? "" : text.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });

/**
 * The live feed. `onEvent(type, envelope)` gets each event ({type, shipper, data});
 * `onStatus(state, info)` gets "connecting" | "live" | "reconnecting" | "denied" | "stopped".
 */
export class LiveFeed {
  constructor({ url, getKey, onEvent, onStatus = () => {}, minDelayMs = 500, maxDelayMs = 15000 }) {
    Object.assign(this, { url, getKey, onEvent, onStatus, minDelayMs, maxDelayMs });
    this.stopper = null;
    this.connection = null;
    this.connects = 0;
  }

  start() {
    if (this.stopper) return;
    this.stopper = new AbortController();
    this.loop(this.stopper.signal);
  }

  stop() {
    this.stopper?.abort();
    this.connection?.abort();
    this.stopper = null;
    this.onStatus("stopped");
  }

  /** Drop the current connection (the loop reconnects); used by tests and the watchdog. */
  drop() {
    this.connection?.abort();
  }

  async loop(stopped) {
    let delay = this.minDelayMs;
    let lastId = null;
    while (!stopped.aborted) {
      this.onStatus(this.connects ? "reconnecting" : "connecting", { delay: 0 });
      this.connection = new AbortController();
      const conn = this.connection;
      let watchdog = null;
      try {
        const headers = { Accept: "text/event-stream", Authorization: `Bearer ${this.getKey()}` };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const res = await fetch(this.url, { headers, signal: conn.signal, cache: "no-store" });
        if (res.status === 401 || res.status === 403) {
          this.onStatus("denied", { status: res.status });
          await sleep(this.maxDelayMs, stopped);
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.connects += 1;
        this.onStatus("live", { reconnected: this.connects > 1 });
        delay = this.minDelayMs;
        const parser = new SseParser(
          (msg) => {
            lastId = msg.id ?? lastId;
            this.dispatch(msg);
          },
          (retry) => {
            this.minDelayMs = Math.max(250, Math.min(retry, this.maxDelayMs));
          },
        );
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let lastByte = Date.now();
        // Only a server that sends keep-alive comments can be judged silent-and-dead.
        watchdog = setInterval(() => {
          if (parser.sawComment && Date.now() - lastByte > 45000) conn.abort();
        }, 5000);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          lastByte = Date.now();
          parser.push(value);
        }
      } catch (e) {
        if (stopped.aborted) break;
        console.debug("live feed dropped:", e?.message || e);
      } finally {
        if (watchdog) clearInterval(watchdog);
      }
      if (stopped.aborted) break;
      const wait = delay + Math.random() * delay * 0.3;
      this.onStatus("reconnecting", { delay: wait });
      await sleep(wait, stopped);
      delay = Math.min(delay * 2, this.maxDelayMs);
    }
  }

  dispatch(msg) {
    let payload;
    try {
      payload = JSON.parse(msg.data);
    } catch {
      console.warn("live feed: event that is not JSON skipped", msg.event);
      return;
    }
    // The SSE `event:` field names the type. The data is either the envelope
    // {"type","shipper","data"} or the bare object (an alarm has its own `type` field, so
    // the envelope is recognised by its shape, not by the presence of `type`).
    const isEnvelope =
      payload && typeof payload === "object" && payload.data && typeof payload.data === "object" && "shipper" in payload;
    const type = msg.event && msg.event !== "message" ? msg.event : isEnvelope ? payload.type : "message";
    const envelope = isEnvelope ? payload : { type, shipper: payload?.shipper ?? null, data: payload };
    try {
      this.onEvent(type, envelope);
    } catch (e) {
      console.error("live feed handler failed for", type, e);
    }
  }
}
