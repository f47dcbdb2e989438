// The server's clock as seen from the page. Deadlines (ack_due, resolve_due) and fix ages
// are in server time; a demo or test server may run an accelerated clock, so the page keeps
// a model  server_now = anchor_server + speed * (Date.now() - anchor_local)  and refreshes it.

export class ServerClock {
  constructor() {
    this.anchorServer = Date.now();
    this.anchorLocal = Date.now();
    this.speed = 1;
    this.samples = [];
  }

  now() {
    return this.anchorServer + this.speed * (Date.now() - this.anchorLocal);
  }

  /** Feed one observation of the server time (ms), e.g. from /healthz `now`. */
  observe(serverMs, { speed = null, rttMs = 0 } = {}) {
    if (!Number.isFinite(serverMs)) return;
    const local = Date.now() - rttMs / 2;
    if (Number.isFinite(speed) && speed > 0) {
      this.speed = speed;
    } else {
      this.samples.push([local, serverMs]);
      if (this.samples.length > 6) this.samples.shift();
      const [l0, s0] = this.samples[0];
      // Estimate the rate only over a long enough base; round near-1 rates to exactly 1.
      if (local - l0 >= 10000) {
        const rate = (serverMs - s0) / (local - l0);
        this.speed = Math.abs(rate - 1) < 0.05 ? 1 : Math.max(rate, 0.001);
      }
    }
    this.anchorServer = serverMs;
    this.anchorLocal = local;
  }
}
