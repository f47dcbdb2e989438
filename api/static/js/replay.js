// Trip replay for fleet managers: the track on the map with a time scrubber, play/pause and
// speed; lock events, milestones, geofence entries/exits and alarms as markers on the
// timeline and the map (with the trip's places and the global geofences drawn); stops
// with durations and on-time; trip statistics; and a "what if" rerun with changed thresholds.

import { ApiError, asList, query } from "./api.js";
import { errorText } from "./actions.js";
import * as fmt from "./format.js";
import { createMap, fenceLayer, pinIcon, routeLayer, truckIcon, tripPlacesLayer } from "./mapview.js";
import { diffAlarms, indexAt, parseTrack, positionAt, tripStats } from "./track.js";

const L = window.L;
const { h, fill } = fmt;

/** Thresholds offered in the what-if form (contract §4 names) with engine defaults. */
export const WHATIF_RULES = [
  ["corridor_m", "Corridor", "m", 500],
  ["off_route_min_s", "Off route for", "s", 120],
  ["stop_radius_m", "Stop radius", "m", 150],
  ["stop_max_min", "Long stop", "min", 30],
  ["max_dwell_min", "Max dwell", "min", 120],
  ["speed_limit_kmh", "Speed limit", "km/h", 90],
  ["late_tolerance_min", "Late after", "min", 30],
  ["signal_lost_s", "Signal lost", "s", 600],
];

const LOCK_GLYPH = { locked: "L", unlocked: "U", tamper: "!", rope_cut: "!", forced_open: "!", low_battery: "b", heartbeat: "·" };
const SPEEDS = [10, 60, 300, 1200, 3600];

export class ReplayView {
  constructor(ctx) {
    this.ctx = ctx; // {api, clock, config, who, state, toast, setHash(path)}
    this.map = null;
    this.tripId = null;
    this.trip = null;
    this.track = null;
    this.layers = null;
    this.t = 0;
    this.playing = false;
    this.events = [];
    this.whatifMarks = [];
    this.el = (id) => document.getElementById(id);
    this.el("replay-pick").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = this.el("replay-trip").value.trim();
      if (!id) return;
      if (id === this.tripId) this.load(id, null, { force: true }); // Load again: fresh data
      else this.ctx.setHash(`replay/${encodeURIComponent(id)}`);
    });
    const scrub = this.el("replay-scrub");
    scrub.addEventListener("input", () => this.setTime(Number(scrub.value), { fromScrub: true }));
    scrub.addEventListener("keydown", (e) => {
      // Native steps are one second: far too small for a trip of hours.
      if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
        e.preventDefault();
        this.step((e.key === "ArrowLeft" ? -1 : 1) * (e.shiftKey ? 600000 : 60000));
      }
    });
    this.el("replay-play").addEventListener("click", () => this.toggle());
    this.el("replay-speed").addEventListener("change", () => {});
  }

  activate() {
    if (!this.map) {
      this.map = createMap(this.el("replay-map"), this.ctx.config);
      this.loadTripList();
      this.syncFences();
      this.ctx.state?.addEventListener?.("fences", () => this.syncFences());
    }
    // The container was hidden until now: Leaflet must measure it before fitting bounds.
    this.map.invalidateSize();
  }

  /** The global geofences (depots, consignees, risk zones, rest areas) under the track. */
  syncFences() {
    if (!this.map) return;
    this.fenceGroup?.remove();
    this.fenceGroup = fenceLayer(this.ctx.state?.fences || []).addTo(this.map);
  }

  async loadTripList() {
    try {
      const trips = asList(await this.ctx.api.get(`/v1/trips${query({ limit: 500 })}`), "trips");
      fill(this.el("replay-trips"),
        ...trips
          .filter((t) => t?.trip_id)
          .map((t) => h("option", { value: t.trip_id }, [t.vehicle, t.shipper, t.status].filter(Boolean).join(" · "))),
      );
    } catch {
      /* typing a trip id still works */
    }
  }

  // -- loading ----------------------------------------------------------------------------
  async load(tripId, atMs = null, { force = false } = {}) {
    this.activate();
    this.pause();
    this.el("replay-trip").value = tripId;
    if (tripId === this.tripId && this.track && !force) {
      if (atMs !== null) this.setTime(atMs);
      return;
    }
    this.tripId = tripId;
    const id = encodeURIComponent(tripId);
    fill(this.el("replay-title"), "Loading…");
    let trip;
    let fc;
    try {
      [trip, fc] = await Promise.all([this.ctx.api.get(`/v1/trips/${id}`), this.ctx.api.get(`/v1/trips/${id}/track`)]);
    } catch (e) {
      this.tripId = null;
      fill(this.el("replay-title"), h("span", { class: "error" }, e instanceof ApiError && e.status === 404 ? `No trip ${tripId} visible to this key (404).` : errorText(e)));
      return;
    }
    this.trip = trip?.trip ?? trip;
    this.track = parseTrack(fc);
    // Live alarms of the trip (for the what-if comparison and their current status).
    try {
      this.liveAlarms = asList(await this.ctx.api.get(`/v1/alarms${query({ trip_id: tripId, limit: 1000 })}`), "alarms");
    } catch {
      this.liveAlarms = [];
    }
    const known = new Set(this.track.alarms.map((a) => a.alarm_id).filter(Boolean));
    for (const a of this.liveAlarms) {
      if (!known.has(a.alarm_id)) this.track.alarms.push({ ...a, ts: fmt.toMs(a.ts) });
    }
    this.track.alarms.sort((a, b) => a.ts - b.ts);
    this.stats = tripStats(this.trip, this.track);
    this.draw();
    this.renderSide();
    this.renderWhatifForm();
    const start = this.range[0];
    this.setTime(atMs ?? start);
  }

  get range() {
    const pts = this.track.points;
    const times = [
      ...pts.map((p) => p.ts),
      ...this.track.locks.map((e) => e.ts),
      ...this.track.milestones.map((e) => e.ts),
      ...this.track.geofences.map((e) => e.ts),
      ...this.track.alarms.map((e) => e.ts),
    ].filter(Number.isFinite);
    if (!times.length) {
      const s = fmt.toMs(this.trip?.planned_start) ?? this.ctx.clock.now();
      return [s, s + 1000];
    }
    return [Math.min(...times), Math.max(...times, Math.min(...times) + 1000)];
  }

  draw() {
    const map = this.map;
    this.layers?.remove();
    const g = L.layerGroup().addTo(map);
    this.layers = g;
    const trip = this.trip;
    g.addLayer(routeLayer(map, trip, { colour: "#868e96" }));
    g.addLayer(tripPlacesLayer(trip));
    const latlngs = this.track.points.map((p) => [p.lat, p.lon]);
    this.fullLine = L.polyline(latlngs, { color: "#1f6feb", weight: 3, opacity: 0.3 }).addTo(g);
    this.playedLine = L.polyline([], { color: "#1f6feb", weight: 4, opacity: 0.95 }).addTo(g);
    this.truck = null;
    if (latlngs.length) {
      this.truck = L.marker(latlngs[0], {
        icon: truckIcon("on_route", { selected: true }),
        keyboard: false,
        interactive: false,
        zIndexOffset: 2000,
      }).addTo(g);
      this.truck.getElement()?.setAttribute("data-testid", "replay-truck");
    }

    // One list of events for map markers, timeline marks and the side list.
    const ev = [];
    for (const e of this.track.locks) {
      if (e.event === "heartbeat") continue;
      ev.push({ kind: "lock", ts: e.ts, lat: e.lat, lon: e.lon, glyph: LOCK_GLYPH[e.event] || "L", text: `Lock ${String(e.event).replace(/_/g, " ")}${e.method ? ` (${e.method})` : ""}`, item: e });
    }
    for (const m of this.track.milestones) {
      ev.push({ kind: "milestone", ts: m.ts, lat: m.lat, lon: m.lon, glyph: "⚑", text: `${fmt.label(m.kind)}${m.stop_id ? ` · ${m.stop_id}` : ""}`, item: m });
    }
    for (const f of this.track.geofences) {
      const what = `${fmt.label(f.kind || "geofence")} ${f.name || f.geofence_id || ""}`.trim();
      ev.push({ kind: "geofence", ts: f.ts, lat: f.lat, lon: f.lon, glyph: f.change === "exited" ? "◁" : "▷", text: `${f.change === "exited" ? "Left" : "Entered"} ${what}`, item: f });
    }
    for (const a of this.track.alarms) {
      ev.push({ kind: "alarm", ts: a.ts, lat: a.lat, lon: a.lon, glyph: "⚠", sev: a.severity, text: `${fmt.label(a.type)} (${a.severity})`, item: a });
    }
    ev.sort((a, b) => a.ts - b.ts);
    // Events without their own position sit where the truck was at that time.
    for (const e of ev) {
      if (!Number.isFinite(e.lat) || !Number.isFinite(e.lon)) {
        const p = positionAt(this.track.points, e.ts);
        if (p) Object.assign(e, { lat: p.lat, lon: p.lon });
      }
      if (Number.isFinite(e.lat) && Number.isFinite(e.lon)) {
        e.marker = L.marker([e.lat, e.lon], {
          icon: pinIcon(e.kind, e.glyph, e.sev ? `pin-sev-${e.sev}` : ""),
          title: `${fmt.localText(e.ts, this.ctx.clock.now())} — ${e.text}`,
          alt: e.text,
          zIndexOffset: e.kind === "alarm" ? 1000 : 0,
        })
          .on("click", () => this.setTime(e.ts))
          .addTo(g);
        e.marker.getElement()?.setAttribute("data-kind", e.kind);
      }
    }
    this.events = ev;

    // Timeline.
    const [start, end] = this.range;
    const scrub = this.el("replay-scrub");
    scrub.min = String(start);
    scrub.max = String(end);
    scrub.step = "any"; // any millisecond: snapping would move events off their time
    this.el("replay-timeline").hidden = false;
    this.drawMarks();
    // The timeline took room from the map: measure again before fitting the trip in.
    map.invalidateSize();
    const b = this.fullLine.getBounds();
    const rb = L.polyline(routeCoordsOf(trip)).getBounds();
    if (b.isValid()) map.fitBounds(rb.isValid() ? b.extend(rb) : b, { padding: [30, 30] });
    else if (rb.isValid()) map.fitBounds(rb, { padding: [30, 30] });
    const now = this.ctx.clock.now();
    fill(
      this.el("replay-axis"),
      [0, 0.25, 0.5, 0.75, 1].map((f) => h("span", { style: `left:${f * 100}%` }, fmt.localText(start + f * (end - start), now, { seconds: false }))),
    );
    const name = trip.vehicle ? ` · ${trip.vehicle}` : "";
    fill(this.el("replay-title"),
      h("b", {}, trip.trip_id),
      name,
      trip.shipper ? ` · ${trip.shipper}` : "",
      trip.status ? ` · ${trip.status}` : "",
      " · ",
      fmt.timeEl(start, this.ctx.clock.now()),
      " – ",
      fmt.timeEl(end, this.ctx.clock.now()),
    );
  }

  drawMarks() {
    const [start, end] = this.range;
    const span = Math.max(end - start, 1);
    const all = [...this.events, ...this.whatifMarks];
    fill(this.el("replay-marks"),
      ...all.map((e) =>
        h(
          "button",
          {
            type: "button",
            class: `mark mark-${e.kind}${e.sev ? ` sev-${e.sev}` : ""}${e.whatif ? " whatif-new" : ""}`,
            style: `left:${(((e.ts - start) / span) * 100).toFixed(3)}%`,
            title: `${fmt.localText(e.ts, this.ctx.clock.now())} — ${e.text}`,
            "aria-label": `${e.text} at ${fmt.localText(e.ts, this.ctx.clock.now())}`,
            dataset: { kind: e.kind, ts: e.ts },
            onclick: () => this.setTime(e.ts),
          },
          e.glyph === "⚑" ? "" : e.glyph,
        ),
      ),
    );
  }

  // -- time -------------------------------------------------------------------------------
  setTime(t, { fromScrub = false } = {}) {
    if (!this.track) return;
    const [start, end] = this.range;
    t = Math.min(Math.max(t, start), end);
    this.t = t;
    const now = this.ctx.clock.now();
    if (!fromScrub) this.el("replay-scrub").value = String(t);
    const out = this.el("replay-time");
    out.textContent = fmt.localText(t, now);
    out.title = fmt.utcText(t);
    const pts = this.track.points;
    const pos = positionAt(pts, t);
    if (pos && this.truck) {
      this.truck.setLatLng([pos.lat, pos.lon]);
      const i = indexAt(pts, t);
      const played = pts.slice(0, i + 1).map((p) => [p.lat, p.lon]);
      if (i >= 0 && i < pts.length - 1) played.push([pos.lat, pos.lon]);
      this.playedLine.setLatLngs(played);
    }
    // Events in the future fade; the latest past event within 10 minutes is "current".
    let current = null;
    for (const e of this.events) {
      e.marker?.setOpacity(e.ts <= t ? 1 : 0.35);
      if (e.ts <= t && t - e.ts <= 10 * 60000) current = e;
    }
    const fix = pos ? pts[Math.max(pos.index, 0)] : null;
    const readout = this.el("replay-readout");
    fill(readout,
      fix ? `${fmt.speed(fix.speed_kmh)}` : "",
      fix && fix.state ? ` · ${fmt.label(fix.state)}` : "",
      current ? h("span", { class: `current-event kind-${current.kind}`, "data-kind": current.kind }, `  ·  ${current.glyph} ${current.text} at ${fmt.localText(current.ts, now)}`) : "",
    );
    document.querySelectorAll("#replay-events li").forEach((li) => li.classList.toggle("current", current !== null && Number(li.dataset.ts) === current.ts && li.dataset.kind === current.kind));
  }

  step(ms) {
    this.setTime(this.t + ms);
  }

  stepEvent(dir) {
    const list = this.events.map((e) => e.ts);
    const next = dir > 0 ? list.find((ts) => ts > this.t + 500) : [...list].reverse().find((ts) => ts < this.t - 500);
    if (next !== undefined) this.setTime(next);
  }

  changeSpeed(dir) {
    const sel = this.el("replay-speed");
    const i = SPEEDS.indexOf(Number(sel.value));
    sel.value = String(SPEEDS[Math.min(Math.max(i + dir, 0), SPEEDS.length - 1)]);
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  play() {
    if (!this.track) return;
    const [, end] = this.range;
    if (this.t >= end) this.setTime(this.range[0]);
    this.playing = true;
    const btn = this.el("replay-play");
    btn.textContent = "❚❚ Pause";
    btn.setAttribute("aria-pressed", "true");
    let last = performance.now();
    const frame = (now) => {
      if (!this.playing) return;
      const speed = Number(this.el("replay-speed").value) || 60;
      this.setTime(this.t + (now - last) * speed);
      last = now;
      if (this.t >= this.range[1]) this.pause();
      else this.raf = requestAnimationFrame(frame);
    };
    this.raf = requestAnimationFrame(frame);
  }

  pause() {
    this.playing = false;
    if (this.raf) cancelAnimationFrame(this.raf);
    const btn = this.el("replay-play");
    btn.textContent = "▶ Play";
    btn.setAttribute("aria-pressed", "false");
  }

  // -- side panel -------------------------------------------------------------------------
  renderSide() {
    const s = this.stats;
    const now = this.ctx.clock.now();
    this.el("replay-empty").hidden = true;
    const onTime = s.planned.filter((p) => p.on_time !== null);
    fill(this.el("replay-stats"),
      h(
        "div",
        { class: "stats" },
        stat(fmt.distance(s.distance_m), "distance"),
        stat(fmt.duration(s.duration_ms), "duration"),
        stat(fmt.duration(s.driving_ms), "driving"),
        stat(fmt.duration(s.stopped_ms), "stopped"),
        stat(s.avg_speed_kmh === null ? "–" : fmt.speed(s.avg_speed_kmh), "average while driving"),
        stat(onTime.length ? `${onTime.filter((p) => p.on_time).length} / ${onTime.length}` : "–", "stops on time"),
        stat(String(this.track.alarms.length), "alarms"),
        stat(s.gap_ms ? fmt.duration(s.gap_ms) : "none", "signal gaps"),
      ),
    );
    this.el("replay-stops-title").hidden = false;
    const stops = [
      ...s.planned.map((p) =>
        h(
          "li",
          {},
          h("div", { class: "name" }, `${p.index}. ${p.name}`),
          h(
            "div",
            { class: "small" },
            "arrived ",
            p.arrived !== null ? fmt.timeEl(p.arrived, now) : "–",
            " · left ",
            p.left !== null ? fmt.timeEl(p.left, now) : "–",
            " · dwell ",
            h("b", {}, p.dwell_ms !== null ? fmt.duration(p.dwell_ms) : "–"),
          ),
          h(
            "div",
            { class: "small" },
            "ETA ",
            p.eta !== null ? fmt.timeEl(p.eta, now, { seconds: false }) : "–",
            " · ",
            p.on_time === null
              ? h("span", { class: "muted" }, p.arrived === null ? "not reached" : "no ETA")
              : p.on_time
                ? h("span", { class: "ontime" }, p.late_by_ms > 0 ? `on time (+${fmt.duration(p.late_by_ms)})` : `on time (${fmt.duration(-p.late_by_ms)} early)`)
                : h("span", { class: "late" }, `late by ${fmt.duration(p.late_by_ms)}`),
          ),
        ),
      ),
      ...s.unplanned.map((u) =>
        h(
          "li",
          {},
          h("div", { class: "unplanned" }, "Unplanned stop"),
          h("div", { class: "small" }, fmt.timeEl(u.from, now), " – ", fmt.timeEl(u.to, now), " · ", h("b", {}, fmt.duration(u.duration_ms))),
        ),
      ),
    ];
    fill(this.el("replay-stops"), ...(stops.length ? stops : [h("li", { class: "muted" }, "No stops.")]));
    this.el("replay-events-title").hidden = false;
    fill(this.el("replay-events"),
      ...this.events.map((e) =>
        h(
          "li",
          { dataset: { ts: e.ts, kind: e.kind } },
          h(
            "button",
            { type: "button", onclick: () => this.setTime(e.ts) },
            fmt.timeEl(e.ts, now),
            h("span", { class: `ev-icon ev-${e.kind}${e.sev ? ` ev-sev-${e.sev}` : ""}` }, e.glyph),
            h("span", {}, e.text),
          ),
        ),
      ),
    );
  }

  // -- what if ----------------------------------------------------------------------------
  renderWhatifForm() {
    const box = this.el("whatif");
    const allowed = this.ctx.who.whatif !== false;
    box.hidden = !allowed;
    if (!allowed) return;
    const trip = this.trip;
    const form = this.el("whatif-form");
    fill(form,
      ...WHATIF_RULES.flatMap(([key, text, unit, def]) => {
        const current = trip?.rules?.[key] ?? trip?.[key] ?? def;
        return [
          h("label", { for: `wi-${key}`, title: key }, text, h("small", { class: "muted" }, ` ${unit}`)),
          h("input", { id: `wi-${key}`, name: key, type: "number", min: "0", step: "any", placeholder: String(current), title: `now ${current} ${unit}` }),
        ];
      }),
      h("button", { type: "submit", class: "primary" }, "Run what-if"),
    );
    form.onsubmit = (e) => {
      e.preventDefault();
      this.runWhatif();
    };
    fill(this.el("whatif-result"));
    this.clearWhatif();
  }

  clearWhatif() {
    for (const m of this.whatifMarks) m.marker?.remove();
    this.whatifMarks = [];
  }

  async runWhatif() {
    const overrides = {};
    for (const [key] of WHATIF_RULES) {
      const v = this.el(`wi-${key}`).value;
      if (v !== "") overrides[key] = Number(v);
    }
    const out = this.el("whatif-result");
    fill(out, h("p", { class: "muted" }, "Replaying the trip with the changed thresholds…"));
    let alarms;
    try {
      let data;
      try {
        data = await this.ctx.api.post("/v1/replay", { trip_ids: [this.tripId], rules: overrides });
      } catch (e) {
        // A server that names the overrides `overrides` rejects `rules` as unknown (422).
        if (!(e instanceof ApiError) || e.status !== 422 || !/rules|extra|forbid/i.test(e.message)) throw e;
        data = await this.ctx.api.post("/v1/replay", { trip_ids: [this.tripId], overrides });
      }
      alarms = asList(data, "alarms");
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {
        this.ctx.who.whatif = false;
        fill(out, h("p", { class: "error" }, "This key may not run a what-if replay (403)."));
        return;
      }
      fill(out, h("p", { class: "error" }, errorText(e)));
      return;
    }
    const live = this.liveAlarms || [];
    const diff = diffAlarms(live, alarms);
    const now = this.ctx.clock.now();
    this.clearWhatif();
    for (const a of diff.appear) {
      const ts = fmt.toMs(a.ts);
      const mark = { kind: "alarm", whatif: true, ts, sev: a.severity, glyph: "+", text: `would appear: ${fmt.label(a.type)} (${a.severity})` };
      const pos = Number.isFinite(a.lat) ? a : positionAt(this.track.points, ts);
      if (pos) {
        mark.marker = L.marker([pos.lat, pos.lon], { icon: pinIcon("alarm", "+", `whatif-new pin-sev-${a.severity}`), title: mark.text, alt: mark.text })
          .on("click", () => this.setTime(ts))
          .addTo(this.layers);
      }
      this.whatifMarks.push(mark);
    }
    this.drawMarks();
    const TAG = { appear: "+ would appear", disappear: "− would disappear", same: "= unchanged" };
    const item = (cls, a, extra = "") =>
      h(
        "li",
        { class: cls, dataset: { type: a.type } },
        h("span", { class: "tag" }, TAG[cls]),
        h("button", { type: "button", class: "small ghost", onclick: () => this.setTime(fmt.toMs(a.ts)), title: "Go to this time" }, fmt.localText(fmt.toMs(a.ts), now)),
        h("span", { class: "what" }, `${fmt.label(a.type)} · ${a.severity}${extra}`),
      );
    const names = Object.entries(overrides).map(([k, v]) => `${k} = ${v}`).join(", ") || "no change";
    fill(out,
      h(
        "p",
        { class: "small", id: "whatif-summary" },
        h("b", {}, `${diff.appear.length} would appear, ${diff.disappear.length} would disappear, ${diff.same.length} unchanged`),
        h("br"),
        h("span", { class: "muted" }, `with ${names}; compared with the ${live.length} live alarm(s) of this trip.`),
      ),
      h(
        "ul",
        { class: "diff" },
        ...diff.appear.map((a) => item("appear", a)),
        ...diff.disappear.map((a) => item("disappear", a, a.status ? ` · live ${a.status}` : "")),
        ...diff.same.map(({ whatif }) => item("same", whatif)),
      ),
    );
  }
}

function stat(value, text) {
  return h("div", {}, h("b", {}, value), h("span", {}, text));
}

function routeCoordsOf(trip) {
  const g = trip?.route?.type === "Feature" ? trip.route.geometry : trip?.route;
  return (g?.coordinates || []).map(([lon, lat]) => [lat, lon]);
}
