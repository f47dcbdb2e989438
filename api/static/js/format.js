// Formatting for people at a 24-hour desk: local times (UTC on hover), durations, units.
// Pure functions: no DOM except the small element builders at the bottom.

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Epoch ms from an RFC 3339 string, epoch ms number or Date; null when absent/invalid. */
export function toMs(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return Number.isFinite(value) ? value : null;
  if (value instanceof Date) return value.getTime();
  if (typeof value === "string" && /^-?\d+$/.test(value)) return Number(value);
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms;
}

/** "2026-11-22 06:03:05 UTC" — the hover text of every time on the page. */
export function utcText(ms) {
  const d = new Date(ms);
  return (
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`
  );
}

const dayFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });

/** Local wall time; the date is added when it is not the same local day as `now`. */
export function localText(ms, now = Date.now(), { seconds = true } = {}) {
  const d = new Date(ms);
  const n = new Date(now);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? ":" + pad(d.getSeconds()) : ""}`;
  const sameDay =
    d.getFullYear() === n.getFullYear() && d.getMonth() === n.getMonth() && d.getDate() === n.getDate();
  return sameDay ? hms : `${dayFmt.format(d)} ${hms}`;
}

/** The desk's time zone name, shown once in the header. */
export function zoneName() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  } catch {
    return "local";
  }
}

/** "3 h 12 min", "4 min 05 s", "12 s" (absolute value; callers add the sign wording). */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  let s = Math.round(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${pad(m)} min`;
  if (m > 0) return `${m} min ${pad(s)} s`;
  return `${s} s`;
}

/**
 * A deadline countdown in words: "in 14 min 21 s", "in 3 h 59 min", "overdue 5 min".
 * Seconds show only while they matter (under an hour ahead, under a minute overdue).
 */
export function countdown(msLeft) {
  if (msLeft === null || msLeft === undefined || !Number.isFinite(msLeft)) {
    return { text: "–", overdue: false, urgent: false };
  }
  const overdue = msLeft < 0;
  const s = Math.floor(Math.abs(msLeft) / 1000);
  let text;
  if (overdue) text = s < 60 ? `${s} s` : duration(Math.floor(s / 60) * 60000).replace(/ \d+ s$/, "").replace(/ 00 s$/, "");
  else if (s < 3600) text = s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  else text = duration(s * 1000).replace(/ \d+ s$/, "");
  return {
    text: overdue ? `overdue ${text}` : `in ${text}`,
    overdue,
    urgent: !overdue && msLeft < 3 * 60 * 1000,
  };
}

/** "850 m", "12.4 km", "312 km". */
export function distance(m) {
  if (m === null || m === undefined || !Number.isFinite(Number(m))) return "–";
  m = Number(m);
  if (Math.abs(m) < 1000) return `${Math.round(m)} m`;
  const km = m / 1000;
  return `${km < 100 ? km.toFixed(1) : Math.round(km)} km`;
}

export function speed(kmh) {
  if (kmh === null || kmh === undefined || !Number.isFinite(Number(kmh))) return "–";
  return `${Math.round(Number(kmh))} km/h`;
}

/** "42 s ago", "3 min ago", "in 5 min". */
export function age(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  // Seconds matter only in the first minute; after that they are noise.
  const text = Math.abs(ms) < 60000 ? duration(ms) : duration(ms).replace(/ \d+ s$/, "");
  return ms >= 0 ? `${text} ago` : `in ${text}`;
}

/** "LOCK_TAMPER" -> "Lock tamper". */
export function label(code) {
  if (!code) return "";
  const s = String(code).replace(/[_.]+/g, " ").toLowerCase();
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** Escape text for the few places that build HTML strings (Leaflet popups/tooltips). */
export function esc(text) {
  return String(text ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

/** A <time> element: local text, machine datetime, UTC on hover. */
export function timeEl(value, now = Date.now(), opts = {}) {
  const ms = toMs(value);
  const el = document.createElement("time");
  if (ms === null) {
    el.textContent = "–";
    return el;
  }
  el.dateTime = new Date(ms).toISOString();
  el.title = utcText(ms);
  el.textContent = localText(ms, now, opts);
  return el;
}

/** Tiny element builder: h("div", {class: "x", onclick}, child, "text"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** replaceChildren that skips null/false/"" (optional parts of a view). */
export function fill(el, ...children) {
  el.replaceChildren(
    ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false && c !== ""),
  );
  return el;
}
