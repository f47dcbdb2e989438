// A trip's track (GET /v1/trips/{id}/track, a GeoJSON FeatureCollection) read into time-
// ordered arrays, and the statistics of a replay: distance, driving and stopped time,
// planned stops with arrival/departure/dwell and on-time, unplanned stops. Pure functions.

import { toMs } from "./format.js";

const MILESTONES = new Set(["sealed", "departed", "arrived", "unsealed", "left", "completed"]);
const MOVING_KMH = 5;
const GAP_MS = 10 * 60 * 1000; // longer than this between fixes: a signal gap, not driving
const STOP_RADIUS_M = 150;
const MIN_STOP_MS = 5 * 60 * 1000;

const KINDS = {
  track: "line",
  line: "line",
  fix: "fix",
  position: "fix",
  point: "fix",
  track_point: "fix",
  flagged_fix: "skip", // a fix not valid for rules (GPS jump): stored, flagged, not used
  lock: "lock",
  lock_event: "lock",
  milestone: "milestone",
  alarm: "alarm",
  geofence: "geofence", // geofence.entered / geofence.exited of a depot, consignee or custom fence
  trip_status: "skip",
  status: "skip",
};

function kindOf(f) {
  const p = f.properties || {};
  const raw = String(p.kind ?? p.feature ?? p.feature_type ?? p.category ?? "").toLowerCase();
  if (raw) return KINDS[raw] ?? (MILESTONES.has(raw) ? "milestone" : "skip");
  if (p.alarm_id || p.severity) return "alarm";
  if (p.milestone) return "milestone";
  if (p.event) return "lock";
  if (f.geometry?.type === "Point") return "fix";
  if (f.geometry?.type === "LineString") return "line";
  return "skip";
}

const timeOf = (p) => toMs(p.ts ?? p.time ?? p.at ?? p.timestamp);

/** {points, locks, milestones, alarms, geofences}: each sorted by time; points are the valid
 * fixes; geofences are the trip's entries into and exits from global geofences. */
export function parseTrack(fc) {
  const features = Array.isArray(fc) ? fc : Array.isArray(fc?.features) ? fc.features : [];
  const points = [];
  const locks = [];
  const milestones = [];
  const alarms = [];
  const geofences = [];
  const lines = [];
  for (const f of features) {
    if (!f || typeof f !== "object") continue;
    const p = f.properties || {};
    const g = f.geometry;
    const ll = g?.type === "Point" && Array.isArray(g.coordinates) ? { lon: g.coordinates[0], lat: g.coordinates[1] } : {};
    const lat = ll.lat ?? p.lat ?? null;
    const lon = ll.lon ?? p.lon ?? null;
    switch (kindOf(f)) {
      case "fix": {
        const ts = timeOf(p);
        if (ts === null || !Number.isFinite(lat) || !Number.isFinite(lon)) break;
        if (p.valid === false || p.flagged || p.jump) break; // stored, flagged, not used (contract §2)
        points.push({ ts, lat, lon, speed_kmh: num(p.speed_kmh), device_id: p.device_id ?? null, state: p.state ?? null });
        break;
      }
      case "line":
        lines.push(f);
        break;
      case "lock":
        locks.push({ ts: timeOf(p), event: p.event ?? p.type, method: p.method ?? null, device_id: p.device_id ?? null, lat, lon });
        break;
      case "milestone":
        milestones.push({ ts: timeOf(p), kind: p.milestone ?? (MILESTONES.has(p.kind) ? p.kind : p.name ?? p.kind), stop_id: p.stop_id ?? null, lat, lon });
        break;
      case "alarm":
        alarms.push({ ...p, ts: timeOf(p), lat: lat ?? p.lat, lon: lon ?? p.lon });
        break;
      case "geofence":
        geofences.push({
          ts: timeOf(p),
          change: p.change === "exited" ? "exited" : "entered",
          geofence_id: p.geofence_id ?? null,
          name: p.name ?? null,
          kind: p.geofence_kind ?? null,
          device_id: p.device_id ?? null,
          lat,
          lon,
        });
        break;
      default:
        break;
    }
  }
  // Track lines carry per-vertex times (and speeds); they are the fixes of the replay.
  if (!points.length) {
    for (const f of lines) {
      const p = f.properties || {};
      const g = f.geometry || {};
      const coords = g.type === "Point" ? [g.coordinates] : g.coordinates || [];
      const times = p.times ?? p.timestamps ?? p.coordTimes ?? p.coord_times ?? (p.ts ? [p.ts] : null);
      const speeds = p.speeds_kmh ?? p.speeds ?? [];
      if (!Array.isArray(times) || times.length !== coords.length) continue;
      coords.forEach((c, i) => {
        const ts = toMs(times[i]);
        if (ts !== null && Array.isArray(c)) {
          points.push({ ts, lat: c[1], lon: c[0], speed_kmh: num(speeds[i]), device_id: p.device_id ?? null, state: null });
        }
      });
    }
  }
  const byTs = (a, b) => (a.ts ?? 0) - (b.ts ?? 0);
  for (const m of milestones) if (typeof m.kind === "string") m.kind = m.kind.replace(/^milestone[._]?/, "");
  return {
    points: points.sort(byTs),
    locks: locks.filter((l) => l.ts !== null).sort(byTs),
    milestones: milestones.filter((m) => m.ts !== null).sort(byTs),
    alarms: alarms.filter((a) => a.ts !== null).sort(byTs),
    geofences: geofences.filter((g) => g.ts !== null).sort(byTs),
  };
}

function num(v) {
  const n = Number(v);
  return v === null || v === undefined || !Number.isFinite(n) ? null : n;
}

/** Great-circle distance in metres (mean radius; display statistics only). */
export function haversine(lat1, lon1, lat2, lon2) {
  const r = 6371008.8;
  const rad = Math.PI / 180;
  const dlat = (lat2 - lat1) * rad;
  const dlon = (lon2 - lon1) * rad;
  const a = Math.sin(dlat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dlon / 2) ** 2;
  return 2 * r * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** Index of the last point at or before `t` (-1 before the first). */
export function indexAt(points, t) {
  let lo = 0;
  let hi = points.length - 1;
  let ans = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid].ts <= t) {
      ans = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return ans;
}

/** Position at time t, interpolated between fixes (not across a signal gap). */
export function positionAt(points, t) {
  if (!points.length) return null;
  const i = indexAt(points, t);
  if (i < 0) return { ...points[0], index: 0 };
  if (i >= points.length - 1) return { ...points[points.length - 1], index: points.length - 1 };
  const a = points[i];
  const b = points[i + 1];
  if (b.ts - a.ts > GAP_MS) return { ...a, index: i };
  const f = (t - a.ts) / (b.ts - a.ts || 1);
  return { ...a, lat: a.lat + (b.lat - a.lat) * f, lon: a.lon + (b.lon - a.lon) * f, ts: t, index: i };
}

/**
 * Statistics of a replayed trip. `trip` is the trip document (for planned stops and their
 * ETAs); the late tolerance comes from trip.rules.late_tolerance_min (default 30).
 */
export function tripStats(trip, track) {
  const pts = track.points;
  let distance = 0;
  let driving = 0;
  let stopped = 0;
  let gaps = 0;
  for (let i = 1; i < pts.length; i++) {
    const a = pts[i - 1];
    const b = pts[i];
    const dt = b.ts - a.ts;
    const d = haversine(a.lat, a.lon, b.lat, b.lon);
    distance += d;
    if (dt > GAP_MS) {
      gaps += dt;
      continue;
    }
    const implied = dt > 0 ? (d / dt) * 3600 : 0; // km/h from m per ms
    const speed = b.speed_kmh ?? implied;
    if (speed > MOVING_KMH) driving += dt;
    else stopped += dt;
  }
  const start = pts.length ? pts[0].ts : null;
  const end = pts.length ? pts[pts.length - 1].ts : null;
  return {
    distance_m: distance,
    duration_ms: start !== null ? end - start : 0,
    driving_ms: driving,
    stopped_ms: stopped,
    gap_ms: gaps,
    avg_speed_kmh: driving > 0 ? distance / 1000 / (driving / 3600000) : null,
    fixes: pts.length,
    start,
    end,
    planned: plannedStops(trip, track),
    unplanned: unplannedStops(trip, track),
  };
}

/** Planned stops with arrival / departure from the milestones and on-time against ETA. */
export function plannedStops(trip, track) {
  const tolMin = Number(trip?.rules?.late_tolerance_min ?? 30);
  return (trip?.stops || []).map((stop, i) => {
    const mine = track.milestones.filter((m) => m.stop_id === stop.stop_id);
    const arrived = mine.find((m) => m.kind === "arrived")?.ts ?? null;
    const left = mine.find((m) => m.kind === "left")?.ts ?? null;
    const unsealed = mine.find((m) => m.kind === "unsealed")?.ts ?? null;
    const eta = toMs(stop.eta);
    const lateBy = arrived !== null && eta !== null ? arrived - eta : null;
    return {
      index: i + 1,
      stop_id: stop.stop_id,
      name: stop.name || stop.stop_id,
      eta,
      arrived,
      left,
      unsealed,
      dwell_ms: arrived !== null && left !== null ? left - arrived : null,
      late_by_ms: lateBy,
      on_time: lateBy === null ? null : lateBy <= tolMin * 60000,
    };
  });
}

/** Stationary periods (≥ 5 min within 150 m) away from the planned stops. */
export function unplannedStops(trip, track) {
  const pts = track.points;
  const out = [];
  let i = 0;
  const places = [trip?.origin, ...(trip?.stops || [])].filter(Boolean).map(centre).filter(Boolean);
  while (i < pts.length) {
    let j = i;
    while (j + 1 < pts.length && haversine(pts[i].lat, pts[i].lon, pts[j + 1].lat, pts[j + 1].lon) <= STOP_RADIUS_M && (pts[j + 1].speed_kmh ?? 0) <= MOVING_KMH) j++;
    const dur = pts[j].ts - pts[i].ts;
    if (j > i && dur >= MIN_STOP_MS) {
      const atPlace = places.some((c) => haversine(c.lat, c.lon, pts[i].lat, pts[i].lon) <= c.r + STOP_RADIUS_M);
      if (!atPlace) out.push({ from: pts[i].ts, to: pts[j].ts, duration_ms: dur, lat: pts[i].lat, lon: pts[i].lon });
      i = j + 1;
    } else i += 1;
  }
  return out;
}

function centre(place) {
  const g = place.geometry?.type === "Feature" ? place.geometry.geometry : place.geometry;
  if (!g) return null;
  if (g.type === "Point") return { lon: g.coordinates[0], lat: g.coordinates[1], r: Number(place.radius_m) || 200 };
  if (g.type === "Polygon") {
    const ring = g.coordinates[0] || [];
    if (!ring.length) return null;
    const lon = ring.reduce((s, c) => s + c[0], 0) / ring.length;
    const lat = ring.reduce((s, c) => s + c[1], 0) / ring.length;
    const r = Math.max(...ring.map((c) => haversine(lat, lon, c[1], c[0])));
    return { lon, lat, r };
  }
  return null;
}

/**
 * What-if diff: pair would-be alarms with live ones of the same type, nearest event time
 * first, within `windowMs`; the rest would appear (what-if only) or disappear (live only).
 */
export function diffAlarms(live, whatif, windowMs = 30 * 60 * 1000) {
  const same = [];
  const appear = [];
  const used = new Set();
  const liveSorted = [...live].sort((a, b) => toMs(a.ts) - toMs(b.ts));
  for (const w of [...whatif].sort((a, b) => toMs(a.ts) - toMs(b.ts))) {
    let best = null;
    let bestDt = Infinity;
    for (const l of liveSorted) {
      if (used.has(l) || l.type !== w.type) continue;
      const dt = Math.abs(toMs(l.ts) - toMs(w.ts));
      if (dt <= windowMs && dt < bestDt) {
        best = l;
        bestDt = dt;
      }
    }
    if (best) {
      used.add(best);
      same.push({ live: best, whatif: w });
    } else appear.push(w);
  }
  const disappear = liveSorted.filter((l) => !used.has(l));
  return { same, appear, disappear };
}
