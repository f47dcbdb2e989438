// What the desk knows: alarms, trips, fences and the last position of every truck, kept
// current by the live feed. Views subscribe to "alarms", "trips", "trucks", "fences" events.

import { asList, query } from "./api.js";
import { toMs } from "./format.js";

export const ACTIVE = new Set(["open", "acknowledged"]);

/** The deadline that matters now: ack_due while open, resolve_due once acknowledged. */
export function nextDeadline(alarm) {
  if (alarm.status === "open") return toMs(alarm.ack_due);
  if (alarm.status === "acknowledged") return toMs(alarm.resolve_due);
  return null;
}

export function compareByDeadline(a, b) {
  const da = nextDeadline(a) ?? Infinity;
  const db = nextDeadline(b) ?? Infinity;
  if (da !== db) return da - db;
  const sev = { critical: 0, major: 1, minor: 2 };
  return (sev[a.severity] ?? 3) - (sev[b.severity] ?? 3) || String(a.alarm_id).localeCompare(b.alarm_id);
}

export class DeskState extends EventTarget {
  constructor(api, who) {
    super();
    this.api = api;
    this.who = who; // {role, shipper, ...rights}
    this.alarms = new Map();
    this.trips = new Map();
    this.fences = [];
    this.trucks = new Map(); // key: trip_id (or device_id without a trip)
    this.lockState = new Map(); // trip_id -> {state, ts}
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  /** Defence in depth: a shipper key never shows another shipper's object, whatever arrives. */
  inScope(obj) {
    if (!this.who.shipper || !obj) return true;
    const shipper = obj.shipper ?? null;
    return shipper === null || shipper === this.who.shipper;
  }

  async loadAlarms() {
    const lists = await Promise.all(
      ["open", "acknowledged"].map((status) =>
        this.api.get(`/v1/alarms${query({ status, limit: 1000 })}`).then((d) => asList(d, "alarms")),
      ),
    );
    const fresh = new Map();
    for (const a of lists.flat()) if (a?.alarm_id && this.inScope(a)) fresh.set(a.alarm_id, a);
    // Keep resolved ones the feed told us about, so a resolved row can fade out calmly.
    for (const [id, a] of this.alarms) if (!fresh.has(id) && !ACTIVE.has(a.status)) fresh.set(id, a);
    this.alarms = fresh;
    this.emit("alarms", { reload: true });
  }

  async loadTrips() {
    const data = await this.api.get(`/v1/trips${query({ status: "active", limit: 1000 })}`);
    const trips = asList(data, "trips").filter((t) => t?.trip_id && this.inScope(t));
    // Some servers ignore the status filter: keep only what is active (or has no status).
    this.trips = new Map(trips.filter((t) => !t.status || t.status === "active").map((t) => [t.trip_id, t]));
    this.emit("trips", {});
  }

  async loadFences() {
    try {
      const data = await this.api.get(`/v1/geofences${query({ limit: 1000 })}`);
      this.fences = asList(data, "geofences").filter((f) => this.inScope(f.properties ?? f));
    } catch (e) {
      this.fences = [];
      if (e.status !== 403) throw e;
    }
    this.emit("fences", {});
  }

  upsertAlarm(alarm) {
    if (!alarm?.alarm_id || !this.inScope(alarm)) return null;
    const old = this.alarms.get(alarm.alarm_id);
    // The feed and REST answers can cross: never let an older version overwrite a newer one.
    if (old && Number.isFinite(old.version) && Number.isFinite(alarm.version) && alarm.version < old.version) {
      return old;
    }
    const merged = { ...(old || {}), ...alarm };
    if (!alarm.history && old?.history) merged.history = old.history;
    this.alarms.set(alarm.alarm_id, merged);
    this.emit("alarms", { alarm: merged, isNew: !old });
    return merged;
  }

  openAlarmsOfTrip(tripId) {
    return [...this.alarms.values()].filter((a) => a.trip_id === tripId && ACTIVE.has(a.status));
  }

  /** One `position` event (PositionUpdate): the truck of its trip moves. */
  applyPosition(p) {
    if (!p || !Number.isFinite(p.lat) || !Number.isFinite(p.lon) || !this.inScope(p)) return;
    const key = p.trip_id || `device:${p.device_id}`;
    const old = this.trucks.get(key);
    const ts = toMs(p.ts);
    if (old && ts !== null && old.ts !== null && ts < old.ts) return; // a late backlog fix
    this.trucks.set(key, {
      key,
      trip_id: p.trip_id ?? null,
      device_id: p.device_id,
      shipper: p.shipper ?? old?.shipper ?? null,
      ts,
      lat: p.lat,
      lon: p.lon,
      speed_kmh: p.speed_kmh ?? null,
      state: p.state || "on_route",
      distance_to_route_m: p.distance_to_route_m ?? null,
    });
    this.emit("trucks", { key });
  }

  applyLock(tripId, lockState, ts) {
    if (!tripId) return;
    const old = this.lockState.get(tripId);
    if (old && old.ts && ts && ts < old.ts) return;
    this.lockState.set(tripId, { state: lockState, ts });
    this.emit("trucks", { key: tripId });
  }
}
