// The signal for a new critical alarm: a short WebAudio beep (no sound file, no network)
// and a banner that stays until the alarm is acknowledged or dismissed.

import * as fmt from "./format.js";

const { h, fill } = fmt;

export class CriticalSignal {
  constructor({ onOpen, describe }) {
    this.onOpen = onOpen;
    this.describe = describe;
    this.banner = document.getElementById("critical-banner");
    this.pending = new Map(); // alarm_id -> alarm
    this.muted = sessionStorage.getItem("cw.muted") === "1";
    this.audio = null;
    this.beeps = 0; // counted, so a test can see the sound was played
  }

  /** Must run inside a user gesture once (sign-in click): browsers gate audio on it. */
  unlockAudio() {
    try {
      this.audio = this.audio || new (window.AudioContext || window.webkitAudioContext)();
      if (this.audio.state === "suspended") this.audio.resume();
    } catch {
      this.audio = null;
    }
  }

  setMuted(muted) {
    this.muted = muted;
    sessionStorage.setItem("cw.muted", muted ? "1" : "0");
  }

  beep() {
    this.beeps += 1;
    document.body.dataset.beeps = String(this.beeps);
    if (this.muted || !this.audio) return;
    const ctx = this.audio;
    if (ctx.state === "suspended") ctx.resume();
    // Three short high tones: distinct from any phone or radio sound on a desk.
    const t0 = ctx.currentTime + 0.02;
    for (let i = 0; i < 3; i++) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = i === 1 ? 1320 : 880;
      const t = t0 + i * 0.22;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.18, t + 0.01);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t);
      osc.stop(t + 0.18);
    }
  }

  raise(alarm) {
    if (this.pending.has(alarm.alarm_id)) return;
    this.pending.set(alarm.alarm_id, alarm);
    this.beep();
    this.render();
  }

  /** Drop alarms that were acknowledged/resolved (by anyone) from the banner. */
  sync(alarms) {
    let changed = false;
    for (const id of [...this.pending.keys()]) {
      const a = alarms.get(id);
      if (!a || a.status !== "open") {
        this.pending.delete(id);
        changed = true;
      }
    }
    if (changed) this.render();
  }

  render() {
    const list = [...this.pending.values()];
    const openCritical = list.length;
    document.title = openCritical ? `(${openCritical}) CRITICAL — cargowatch desk` : "cargowatch desk";
    if (!list.length) {
      this.banner.hidden = true;
      fill(this.banner);
      return;
    }
    const a = list[list.length - 1];
    this.banner.hidden = false;
    fill(this.banner,
      h("span", {}, "⚠ New critical alarm:"),
      h("span", { class: "banner-text" }, this.describe(a)),
      list.length > 1 ? h("span", {}, `(+${list.length - 1} more)`) : null,
      h("span", { style: "flex:1" }),
      h("button", { type: "button", onclick: () => this.onOpen(a.alarm_id) }, "Open in queue"),
      h(
        "button",
        {
          type: "button",
          class: "ghost",
          onclick: () => {
            this.pending.clear();
            this.render();
          },
        },
        "Dismiss",
      ),
    );
    // Restart the pulse animation for every new critical alarm.
    this.banner.style.animation = "none";
    void this.banner.offsetWidth;
    this.banner.style.animation = "";
  }
}
