// Live view: every active truck on the map in the colour of its state, with its route
// corridor, stops and the fences; a side panel with counts, the nearest alarm deadlines
// and the truck list; click a truck for its trip, last fix age, lock state and alarms.

import { query } from "./api.js";
import * as fmt from "./format.js";
import {
  createMap,
  fenceLayer,
  ROUTE_COLOUR,
  ROUTE_SELECTED,
  routeLayer,
  truckIcon,
  tripPlacesLayer,
} from "./mapview.js";
import { ACTIVE, compareByDeadline, nextDeadline } from "./state.js";
import { parseTrack } from "./track.js";

const L = window.L;
const { h, fill } = fmt;

export const STATES = [
  ["on_route", "On route"],
  ["off_route", "Off route"],
  ["stopped", "Stopped"],
  ["signal_lost", "Signal lost"],
  ["alarm", "Alarm open"],
];
const STATE_LABEL = Object.fromEntries([...STATES, ["idle", "No active trip"]]);
const DEFAULT_SIGNAL_LOST_S = 600;

export class LiveView {
  constructor(ctx) {
    this.ctx = ctx; // {state, api, clock, config, who, showAlarm(id), replayTrip(id)}
    this.map = null;
    this.markers = new Map();
    this.tripLayers = new Map();
    this.fenceGroup = null;
    this.selected = null;
    this.stateFilter = null;
    this.fitted = false;
    this.renderQueued = false;
    this.lockFetched = new Set();
    const { state } = ctx;
    state.addEventListener("trips", () => this.syncTrips());
    state.addEventListener("fences", () => this.syncFences());
    state.addEventListener("trucks", () => this.queueRender());
    state.addEventListener("alarms", () => this.queueRender());
  }

  get visible() {
    return !document.getElementById("view-live").hidden;
  }

  activate() {
    if (!this.map) {
      this.map = createMap(document.getElementById("live-map"), this.ctx.config);
      this.map.on("zoomend", () => this.declutter());
      this.syncFences();
      this.syncTrips();
    }
    // The container was hidden: Leaflet must measure it again.
    this.map.invalidateSize();
    this.render();
  }

  /**
   * Colour state of a truck. "Alarm open" means an unacknowledged critical or major alarm:
   * the truck needs someone now. Minor or acknowledged alarms show as a badge only, so the
   * map keeps telling on route / off route / stopped / signal lost apart.
   */
  displayState(truck) {
    const { state, clock } = this.ctx;
    const trip = truck.trip_id ? state.trips.get(truck.trip_id) : null;
    const open = truck.trip_id ? state.openAlarmsOfTrip(truck.trip_id) : [];
    const limitS = Number(trip?.rules?.signal_lost_s) || DEFAULT_SIGNAL_LOST_S;
    const lost =
      truck.state === "signal_lost" ||
      open.some((a) => a.type === "SIGNAL_LOST") ||
      (truck.ts !== null && clock.now() - truck.ts > limitS * 1000);
    const urgent = open.some(
      (a) => a.status === "open" && a.type !== "SIGNAL_LOST" && (a.severity === "critical" || a.severity === "major"),
    );
    if (urgent) return "alarm";
    if (lost) return "signal_lost";
    if (!truck.trip_id) return "idle";
    return STATE_LABEL[truck.state] ? truck.state : "on_route";
  }

  // -- layers -----------------------------------------------------------------------------
  syncFences() {
    if (!this.map) return;
    this.fenceGroup?.remove();
    this.fenceGroup = fenceLayer(this.ctx.state.fences).addTo(this.map);
  }

  syncTrips() {
    if (!this.map) return;
    const trips = this.ctx.state.trips;
    for (const [id, layer] of this.tripLayers) {
      if (!trips.has(id)) {
        layer.remove();
        this.tripLayers.delete(id);
      }
    }
    const bounds = L.latLngBounds([]);
    for (const trip of trips.values()) {
      if (!this.tripLayers.has(trip.trip_id)) {
        const route = routeLayer(this.map, trip);
        const group = L.layerGroup([route, tripPlacesLayer(trip)]);
        group.route = route;
        group.addTo(this.map);
        this.tripLayers.set(trip.trip_id, group);
      }
      group_bounds(this.tripLayers.get(trip.trip_id), bounds);
    }
    if (!this.fitted && bounds.isValid()) this.map.fitBounds(bounds, { padding: [30, 30] });
    this.loadMissingPositions().then(() => this.fitTrucks());
    this.queueRender();
  }

  /** Once, when the trucks are known: frame them (routes may reach far beyond). */
  fitTrucks() {
    if (this.fitted || !this.map || this.loading) return; // wait for every last position
    const b = L.latLngBounds([...this.ctx.state.trucks.values()].map((t) => [t.lat, t.lon]));
    if (!b.isValid()) return;
    this.fitted = true;
    this.map.fitBounds(b.pad(0.15), { padding: [40, 40], maxZoom: 14 });
  }

  /** Trucks that have not reported on the feed yet: their last known position by REST. */
  async loadMissingPositions() {
    const { state } = this.ctx;
    const todo = [...state.trips.values()].filter((t) => !state.trucks.has(t.trip_id) && !t._positionTried);
    todo.forEach((t) => (t._positionTried = true));
    this.loading = (this.loading || 0) + 1;
    const worker = async () => {
      while (todo.length) {
        const trip = todo.shift();
        try {
          await this.loadPosition(trip);
        } catch (e) {
          if (e.status === 401) return;
        }
      }
    };
    try {
      await Promise.all([worker(), worker(), worker(), worker()]);
    } finally {
      this.loading -= 1;
    }
  }

  async loadPosition(trip) {
    const { state, api, clock } = this.ctx;
    const id = encodeURIComponent(trip.trip_id);
    // One trip read carries the engine's live view (`live`: last fix, state, lock state).
    const doc = await api.get(`/v1/trips/${id}`);
    const live = doc?.live ?? doc?.state ?? null;
    const pos = pickPosition(live);
    if (pos) {
      state.applyPosition({ ...pos, trip_id: trip.trip_id, shipper: trip.shipper });
      const lock = pickLock(live);
      if (lock) state.applyLock(trip.trip_id, lock.state, lock.ts);
      return;
    }
    // No live view: the last point of the recent track.
    const since = new Date(clock.now() - 6 * 3600 * 1000).toISOString();
    const track = parseTrack(await api.get(`/v1/trips/${id}/track${query({ from: since })}`));
    const last = track.points.at(-1);
    const lastLock = track.locks.filter((l) => !["heartbeat", "low_battery"].includes(l.event)).at(-1);
    if (lastLock) state.applyLock(trip.trip_id, lockFromEvent(lastLock.event), lastLock.ts);
    if (last) {
      state.applyPosition({
        trip_id: trip.trip_id,
        shipper: trip.shipper,
        device_id: last.device_id ?? trip.devices?.[0],
        ts: last.ts,
        lat: last.lat,
        lon: last.lon,
        speed_kmh: last.speed_kmh,
        state: last.state ?? "on_route",
      });
    }
  }

  // -- rendering --------------------------------------------------------------------------
  queueRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    // Positions arrive in bursts; draw at most a few times a second.
    setTimeout(() => {
      this.renderQueued = false;
      this.render();
    }, 250);
  }

  render() {
    if (!this.map) return;
    const { state } = this.ctx;
    // Every truck is in exactly one chip, so the chips add up to the truck list.
    const counts = Object.fromEntries([...STATES, ["idle"]].map(([k]) => [k, 0]));
    const rows = [];
    const manyTrucks = state.trucks.size > 40;
    for (const truck of state.trucks.values()) {
      const ds = this.displayState(truck);
      if (ds in counts) counts[ds] += 1;
      rows.push([truck, ds]);
      this.drawMarker(truck, ds, manyTrucks);
    }
    for (const [key, marker] of this.markers) {
      if (!state.trucks.has(key)) {
        marker.remove();
        this.markers.delete(key);
      }
    }
    if (!this.visible) return;
    this.declutter();
    this.renderLegend(counts);
    this.renderMiniAlarms();
    this.renderList(rows);
    this.renderDetail();
  }

  drawMarker(truck, ds, manyTrucks) {
    const trip = this.ctx.state.trips.get(truck.trip_id);
    const name = plateOf(truck, trip);
    let m = this.markers.get(truck.key);
    const selected = this.selected === truck.key;
    const nOpen = truck.trip_id ? this.ctx.state.openAlarmsOfTrip(truck.trip_id).length : 0;
    const look = `${ds}|${selected}|${nOpen}`;
    if (!m) {
      m = L.marker([truck.lat, truck.lon], {
        icon: truckIcon(ds, { selected, badge: nOpen }),
        keyboard: true,
        title: `${name} — ${STATE_LABEL[ds]}`,
        alt: `${name}, ${STATE_LABEL[ds]}`,
        riseOnHover: true,
        zIndexOffset: ds === "alarm" ? 1000 : 0,
      });
      // Leaflet turns Enter on a focused marker into a click.
      m.on("click", () => this.select(truck.key));
      m.addTo(this.map);
      m._look = look;
      this.markers.set(truck.key, m);
    } else {
      m.setLatLng([truck.lat, truck.lon]);
      if (m._look !== look) {
        m.setIcon(truckIcon(ds, { selected, badge: nOpen }));
        m.setZIndexOffset(ds === "alarm" ? 1000 : selected ? 500 : 0);
        const el = m.getElement();
        if (el) {
          el.title = `${name} — ${STATE_LABEL[ds]}`;
          el.setAttribute("alt", `${name}, ${STATE_LABEL[ds]}`);
        }
        m._look = look;
      }
    }
    const wantLabel = !manyTrucks || selected;
    if (wantLabel && !m.getTooltip()) {
      m.bindTooltip(fmt.esc(name), { permanent: true, direction: "right", offset: [12, 0], className: "truck-label" });
      m._priority = 0;
    } else if (!wantLabel && m.getTooltip()) {
      m.unbindTooltip();
    }
  }

  /**
   * One label per truck (its plate), and none that covers another: labels are kept in order
   * of urgency (alarm, selected, then the rest) and one that would overlap a kept one is hidden.
   */
  declutter() {
    if (!this.map) return;
    const order = { alarm: 0, signal_lost: 1, off_route: 2, stopped: 3, on_route: 4, idle: 5 };
    const withLabel = [...this.markers.entries()]
      .map(([key, m]) => [key, m, m.getTooltip()?.getElement()])
      .filter(([, , el]) => el);
    withLabel.sort(([ka, a], [kb, b]) => {
      const pa = ka === this.selected ? -1 : order[(a._look || "").split("|")[0]] ?? 9;
      const pb = kb === this.selected ? -1 : order[(b._look || "").split("|")[0]] ?? 9;
      return pa - pb;
    });
    const kept = [];
    for (const [, , el] of withLabel) {
      el.classList.remove("label-hidden");
      const r = el.getBoundingClientRect();
      const clash = kept.some((k) => r.left < k.right + 2 && r.right + 2 > k.left && r.top < k.bottom && r.bottom > k.top);
      if (clash) el.classList.add("label-hidden");
      else kept.push(r);
    }
  }

  renderLegend(counts) {
    const el = document.getElementById("live-legend");
    const chips = counts.idle ? [...STATES, ["idle", STATE_LABEL.idle]] : STATES;
    fill(el,
      ...chips.map(([key, text]) =>
        h(
          "button",
          {
            class: "chip",
            type: "button",
            "aria-pressed": String(this.stateFilter === key),
            title: `Show only: ${text}`,
            dataset: { state: key },
            onclick: () => {
              this.stateFilter = this.stateFilter === key ? null : key;
              this.render();
            },
          },
          h("b", {}, String(counts[key])),
          h("span", {}, h("span", { class: `dot state-${key}` }), " ", text),
        ),
      ),
    );
  }

  renderMiniAlarms() {
    const { state, clock } = this.ctx;
    const list = [...state.alarms.values()].filter((a) => ACTIVE.has(a.status)).sort(compareByDeadline).slice(0, 6);
    const el = document.getElementById("live-alarms");
    if (!list.length) {
      fill(el, h("li", { class: "muted small" }, "No open alarm."));
      return;
    }
    fill(el,
      ...list.map((a) => {
        const cd = fmt.countdown(nextDeadline(a) - clock.now());
        const trip = state.trips.get(a.trip_id);
        return h(
          "li",
          {},
          h(
            "button",
            { type: "button", onclick: () => this.ctx.showAlarm(a.alarm_id), title: "Open in the alarm queue" },
            h("span", { class: `sev sev-${a.severity}` }, a.severity),
            h("span", {}, fmt.label(a.type), h("span", { class: "sub" }, trip?.vehicle || a.trip_id || "")),
            h("span", { class: `right due${cd.overdue ? " overdue" : cd.urgent ? " urgent" : ""}` }, cd.text,
              h("span", { class: "sub" }, a.status === "open" ? "to ack" : "to resolve")),
          ),
        );
      }),
    );
  }

  renderList(rows) {
    const { state, clock } = this.ctx;
    const order = { alarm: 0, signal_lost: 1, off_route: 2, stopped: 3, on_route: 4, idle: 5 };
    rows.sort(([a, sa], [b, sb]) => order[sa] - order[sb] || String(a.key).localeCompare(b.key));
    const shown = this.stateFilter ? rows.filter(([, s]) => s === this.stateFilter) : rows;
    document.getElementById("live-truck-count").textContent = this.stateFilter
      ? `${shown.length} of ${rows.length}`
      : `${rows.length}`;
    const el = document.getElementById("live-trucks");
    const focusedKey = document.activeElement?.closest?.("#live-trucks button")?.dataset.key;
    fill(el,
      ...shown.map(([t, s]) => {
        const trip = state.trips.get(t.trip_id);
        const b = h(
          "button",
          {
            type: "button",
            dataset: { key: t.key },
            "aria-current": String(this.selected === t.key),
            onclick: () => this.select(t.key, { pan: true }),
          },
          h("span", { class: `dot state-${s}`, title: STATE_LABEL[s] }),
          h(
            "span",
            {},
            trip?.vehicle || t.trip_id || t.device_id,
            h("span", { class: "sub" }, `${t.trip_id || "no trip"} · ${STATE_LABEL[s]}`),
          ),
          h("span", { class: "right" }, fmt.speed(t.speed_kmh), h("span", { class: "sub" }, fmt.age(clock.now() - t.ts))),
        );
        return h("li", {}, b);
      }),
    );
    if (focusedKey) el.querySelector(`button[data-key="${CSS.escape(focusedKey)}"]`)?.focus({ preventScroll: true });
  }

  select(key, { pan = false } = {}) {
    const prev = this.selected;
    this.selected = key;
    for (const k of [prev, key]) {
      const m = this.markers.get(k);
      if (m) m._look = null; // force the icon to redraw with/without the ring
    }
    const truck = this.ctx.state.trucks.get(key);
    for (const [tripId, layer] of this.tripLayers) {
      layer.route?.setColour?.(truck && tripId === truck.trip_id ? ROUTE_SELECTED : ROUTE_COLOUR);
    }
    // Pan only when the truck is out of (or at the edge of) the view: a map that jumps at
    // every click is hard to read.
    if (truck && pan && this.map && !this.map.getBounds().pad(-0.1).contains([truck.lat, truck.lon])) {
      this.map.panTo([truck.lat, truck.lon]);
    }
    if (truck?.trip_id && !this.lockFetched.has(truck.trip_id)) {
      this.lockFetched.add(truck.trip_id);
      this.fetchLock(truck.trip_id).then(() => this.render());
    }
    this.render();
  }

  /** Focus the truck of a trip (from the queue's "show on map"). */
  focusTrip(tripId) {
    const key = this.ctx.state.trucks.has(tripId) ? tripId : null;
    if (key) this.select(key, { pan: true });
    const layer = this.tripLayers.get(tripId);
    if (layer && this.map) {
      const b = L.latLngBounds([]);
      group_bounds(layer, b);
      const truck = this.ctx.state.trucks.get(tripId);
      if (truck) b.extend([truck.lat, truck.lon]);
      if (b.isValid()) this.map.fitBounds(b, { padding: [40, 40], maxZoom: 14 });
    }
  }

  /** Lock state of a trip from the engine's live view, else its recent lock events. */
  async fetchLock(tripId) {
    const { api, state, clock } = this.ctx;
    const id = encodeURIComponent(tripId);
    try {
      const doc = await api.get(`/v1/trips/${id}`);
      const lock = pickLock(doc?.live ?? doc?.state);
      if (lock && lock.state !== "unknown") {
        state.applyLock(tripId, lock.state, lock.ts);
        return;
      }
      const since = new Date(clock.now() - 24 * 3600 * 1000).toISOString();
      const track = parseTrack(await api.get(`/v1/trips/${id}/track${query({ from: since })}`));
      const last = track.locks.filter((l) => !["heartbeat", "low_battery"].includes(l.event)).at(-1);
      if (last) state.applyLock(tripId, lockFromEvent(last.event), last.ts);
    } catch {
      /* the card shows "unknown" */
    }
  }

  renderDetail() {
    const el = document.getElementById("live-detail");
    const { state, clock, who } = this.ctx;
    const truck = this.selected ? state.trucks.get(this.selected) : null;
    if (!truck) {
      fill(el);
      return;
    }
    const ds = this.displayState(truck);
    const trip = state.trips.get(truck.trip_id) || {};
    const lock = state.lockState.get(truck.trip_id);
    const alarms = truck.trip_id ? state.openAlarmsOfTrip(truck.trip_id).sort(compareByDeadline) : [];
    fill(el,
      h(
        "h3",
        {},
        h("span", { class: `dot state-${ds}` }),
        trip.vehicle || truck.trip_id || truck.device_id,
        h("small", { class: "muted" }, STATE_LABEL[ds]),
      ),
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "Trip"),
        h("dd", {}, truck.trip_id || "–", trip.status ? ` (${trip.status})` : ""),
        who.allShippers !== false ? [h("dt", {}, "Shipper"), h("dd", {}, truck.shipper || trip.shipper || "–")] : null,
        h("dt", {}, "Last fix"),
        h("dd", {}, fmt.timeEl(truck.ts, clock.now()), " · ", h("b", { class: "fix-age" }, fmt.age(clock.now() - truck.ts))),
        h("dt", {}, "Speed"),
        h("dd", {}, fmt.speed(truck.speed_kmh)),
        h("dt", {}, "From route"),
        h("dd", {}, fmt.distance(truck.distance_to_route_m)),
        h("dt", {}, "Lock"),
        h("dd", { class: "lock-state" }, lock ? [lockText(lock.state), lock.ts ? [" · ", fmt.timeEl(lock.ts, clock.now())] : ""] : "unknown"),
        h("dt", {}, "Device"),
        h("dd", {}, truck.device_id || "–"),
      ),
      alarms.length
        ? h(
            "ul",
            { class: "mini-alarms" },
            alarms.map((a) =>
              h(
                "li",
                {},
                h(
                  "button",
                  { type: "button", onclick: () => this.ctx.showAlarm(a.alarm_id) },
                  h("span", { class: `sev sev-${a.severity}` }, a.severity),
                  h("span", {}, fmt.label(a.type), h("span", { class: "sub" }, a.status)),
                  h("span", { class: "right" }, fmt.countdown(nextDeadline(a) - clock.now()).text),
                ),
              ),
            ),
          )
        : h("p", { class: "muted small" }, "No open alarm for this trip."),
      h(
        "div",
        { class: "row-actions" },
        truck.trip_id && who.replay !== false
          ? h("button", { type: "button", onclick: () => this.ctx.replayTrip(truck.trip_id) }, "Replay trip")
          : null,
        h("button", { type: "button", class: "ghost", onclick: () => this.focusTrip(truck.trip_id || truck.key) }, "Zoom to trip"),
        h("button", { type: "button", class: "ghost", onclick: () => this.select(null) }, "Close"),
      ),
    );
  }
}

/** The one identifier a truck is known by on the map: its plate (else its trip). */
function plateOf(truck, trip) {
  return trip?.vehicle || truck.trip_id || truck.device_id;
}

function group_bounds(layer, bounds) {
  layer.eachLayer?.((l) => {
    if (l.getBounds) {
      const b = l.getBounds();
      if (b.isValid()) bounds.extend(b);
    } else if (l.getLatLng) bounds.extend(l.getLatLng());
    else if (l.eachLayer) group_bounds(l, bounds);
  });
}

/** A last position from a /state answer, whatever its exact shape. */
function pickPosition(s) {
  if (!s || typeof s !== "object") return null;
  for (const c of [s.position, s.last_fix, s.last_position, s.fix, s]) {
    if (c && Number.isFinite(c.lat) && Number.isFinite(c.lon)) {
      return {
        lat: c.lat,
        lon: c.lon,
        ts: fmt.toMs(c.ts ?? c.time ?? s.last_fix_ts ?? s.ts),
        speed_kmh: c.speed_kmh ?? null,
        device_id: c.device_id ?? s.device_id,
        state: c.state ?? s.route_state ?? s.state ?? "on_route",
        distance_to_route_m: c.distance_to_route_m ?? s.distance_to_route_m ?? null,
      };
    }
  }
  return null;
}

function pickLock(s) {
  const v = s?.lock_state ?? s?.lock ?? s?.last_lock;
  if (!v) return null;
  if (typeof v === "string") return { state: lockFromEvent(v), ts: null };
  return { state: lockFromEvent(v.event ?? v.state), ts: fmt.toMs(v.ts ?? v.time) };
}

export function lockFromEvent(ev) {
  if (["tamper", "rope_cut", "forced_open"].includes(ev)) return "tampered";
  if (ev === "unlocked" || ev === "unsealed") return "unlocked";
  if (ev === "locked" || ev === "sealed") return "locked";
  return ev || "unknown";
}

function lockText(s) {
  return { locked: "● locked", unlocked: "○ unlocked", tampered: "⚠ tampered" }[s] || s;
}
