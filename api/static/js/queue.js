// The alarm queue, the desk's main tool: open and acknowledged alarms, nearest deadline
// first, with live countdowns, filters, and acknowledge / resolve / history per row.
// Keyboard: the table is one tab stop (roving tabindex); j/k move, a/r/h act on the selection.

import { asList, query } from "./api.js";
import { historyItems } from "./actions.js";
import * as fmt from "./format.js";
import { ACTIVE, compareByDeadline, nextDeadline } from "./state.js";

const { h, fill } = fmt;

const TYPES = [
  "ROUTE_DEVIATION",
  "LONG_STOP",
  "DWELL_OVERTIME",
  "UNAUTHORIZED_UNLOCK",
  "UNLOCK_OUT_OF_SEQUENCE",
  "LOCK_TAMPER",
  "SIGNAL_LOST",
  "SPEEDING",
  "LATE_ARRIVAL",
  "LOW_BATTERY",
];

export class QueueView {
  constructor(ctx) {
    this.ctx = ctx; // {state, api, clock, who, actions, showOnMap(tripId), replayTrip(id)}
    this.body = document.getElementById("queue-body");
    this.detail = document.getElementById("queue-detail");
    this.rows = new Map();
    this.selectedId = null;
    this.filters = { status: "active", type: "", shipper: "", severity: "" };
    this.resolved = []; // the "resolved (24 h)" list, loaded on demand
    this.fresh = new Set();
    this.order = [];
    this.detailKey = null;

    const typeSel = document.getElementById("f-type");
    typeSel.append(...TYPES.map((t) => h("option", { value: t }, fmt.label(t))));
    if (ctx.who.allShippers === false || ctx.who.shipper) document.getElementById("f-shipper-wrap").hidden = true;
    document.getElementById("queue-filters").addEventListener("change", (e) => {
      this.filters[e.target.name] = e.target.value;
      if (e.target.name === "status" && e.target.value === "resolved") this.loadResolved();
      this.render();
    });
    document.getElementById("queue-filters").addEventListener("submit", (e) => e.preventDefault());
    this.body.addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-id]");
      if (!tr) return;
      const act = e.target.closest("button[data-act]")?.dataset.act;
      this.select(tr.dataset.id, { focus: !act });
      if (act) this.act(act);
    });
    this.body.addEventListener("keydown", (e) => {
      const tr = e.target.closest("tr[data-id]");
      if (tr && e.target === tr && (e.key === "Enter" || e.key === " ")) {
        e.preventDefault();
        this.select(tr.dataset.id, { focus: true });
        this.detail.querySelector("button:not(:disabled)")?.focus();
      }
    });
    ctx.state.addEventListener("alarms", (e) => {
      const a = e.detail?.alarm;
      if (a && e.detail.isNew) {
        this.fresh.add(a.alarm_id);
        setTimeout(() => this.fresh.delete(a.alarm_id), 3000);
      }
      this.render();
    });
  }

  async loadResolved() {
    const since = new Date(this.ctx.clock.now() - 24 * 3600 * 1000).toISOString();
    try {
      const data = await this.ctx.api.get(`/v1/alarms${query({ status: "resolved", since, limit: 500 })}`);
      this.resolved = asList(data, "alarms").filter((a) => this.ctx.state.inScope(a));
    } catch (e) {
      this.ctx.toast(`Resolved alarms could not be loaded: ${e.message}`, "err");
    }
    this.render();
  }

  /** The rows to show, in order: nearest deadline first (resolved: latest first). */
  list() {
    const f = this.filters;
    let all;
    if (f.status === "resolved") {
      const byId = new Map(this.resolved.map((a) => [a.alarm_id, a]));
      for (const a of this.ctx.state.alarms.values()) if (a.status === "resolved") byId.set(a.alarm_id, a);
      all = [...byId.values()].sort((a, b) => (fmt.toMs(b.resolved_at) ?? 0) - (fmt.toMs(a.resolved_at) ?? 0));
    } else {
      all = [...this.ctx.state.alarms.values()]
        .filter((a) => (f.status === "active" ? ACTIVE.has(a.status) : a.status === f.status))
        .sort(compareByDeadline);
    }
    return all.filter(
      (a) =>
        (!f.type || a.type === f.type) &&
        (!f.shipper || a.shipper === f.shipper) &&
        (!f.severity || a.severity === f.severity),
    );
  }

  get selected() {
    return this.selectedId ? this.ctx.state.alarms.get(this.selectedId) || this.resolved.find((a) => a.alarm_id === this.selectedId) : null;
  }

  render() {
    const { state, who } = this.ctx;
    this.updateShipperFilter();
    const list = this.list();
    const activeCount = [...state.alarms.values()].filter((a) => ACTIVE.has(a.status)).length;
    const critical = [...state.alarms.values()].filter((a) => a.status === "open" && a.severity === "critical").length;
    const count = document.getElementById("queue-count");
    count.textContent = String(activeCount);
    count.classList.toggle("has-critical", critical > 0);
    count.title = `${activeCount} open or acknowledged, ${critical} critical unacknowledged`;
    document.getElementById("queue-summary").textContent = `${list.length} shown · ${activeCount} active · ${critical} critical open`;
    document.getElementById("queue-empty").hidden = list.length > 0;

    if (this.selectedId && !list.some((a) => a.alarm_id === this.selectedId)) {
      // The selected alarm left the list (resolved elsewhere, filtered): keep the selection
      // in place by moving to its neighbour.
      const idx = this.order.indexOf(this.selectedId);
      const next = list[Math.min(Math.max(idx, 0), list.length - 1)];
      this.selectedId = next ? next.alarm_id : null;
    }
    if (!this.selectedId && list.length) this.selectedId = list[0].alarm_id;

    const focused = document.activeElement;
    const focusedRowId = focused?.closest?.("#queue-body tr[data-id]")?.dataset.id ?? null;
    const ids = list.map((a) => a.alarm_id);
    for (const [id, tr] of this.rows) {
      if (!ids.includes(id)) {
        tr.remove();
        this.rows.delete(id);
      }
    }
    list.forEach((a, i) => {
      let tr = this.rows.get(a.alarm_id);
      const look = rowKey(a, who, this.ctx.state.trips.get(a.trip_id));
      if (!tr || tr._look !== look) {
        const fresh = this.rowFor(a);
        if (tr) tr.replaceWith(fresh);
        tr = fresh;
        tr._look = look;
        this.rows.set(a.alarm_id, tr);
      }
      tr.classList.toggle("fresh", this.fresh.has(a.alarm_id));
      const selected = a.alarm_id === this.selectedId;
      tr.setAttribute("aria-selected", String(selected));
      tr.tabIndex = selected ? 0 : -1;
      tr.querySelectorAll("button").forEach((b) => (b.tabIndex = selected ? 0 : -1));
      if (this.body.children[i] !== tr) this.body.insertBefore(tr, this.body.children[i] || null);
    });
    this.order = ids;
    // Moving a focused row blurs it in some browsers, and a row redrawn for a new status is a
    // new element: give the focus back, or a keyboard user would start again at the top.
    if (focused && focused !== document.activeElement) {
      if (document.contains(focused)) focused.focus({ preventScroll: true });
      else if (focusedRowId) (this.rows.get(focusedRowId) || this.rows.get(this.selectedId))?.focus({ preventScroll: true });
    }
    this.tick();
    this.renderDetail();
  }

  updateShipperFilter() {
    const sel = document.getElementById("f-shipper");
    const shippers = [...new Set([...this.ctx.state.alarms.values()].map((a) => a.shipper).filter(Boolean))].sort();
    const have = [...sel.options].map((o) => o.value).filter(Boolean);
    if (have.join("|") === shippers.join("|")) return;
    const value = sel.value;
    fill(sel, h("option", { value: "" }, "all shippers"), ...shippers.map((s) => h("option", { value: s }, s)));
    sel.value = shippers.includes(value) ? value : "";
  }

  rowFor(a) {
    const { who, clock, state } = this.ctx;
    const trip = state.trips.get(a.trip_id);
    const canAct = who.ack !== false;
    return h(
      "tr",
      {
        dataset: { id: a.alarm_id, severity: a.severity, status: a.status, type: a.type },
        class: `row-${a.severity}`,
        "aria-label": `${a.severity} ${fmt.label(a.type)}, trip ${a.trip_id}, ${a.status}`,
      },
      h("td", {}, h("span", { class: `sev sev-${a.severity}` }, a.severity)),
      h("td", { class: "alarm-type" }, fmt.label(a.type), h("span", { class: "sub" }, summarize(a))),
      h("td", { class: "nowrap" }, a.trip_id ?? "–", h("span", { class: "sub" }, trip?.vehicle || a.device_id || "")),
      h("td", {}, a.shipper ?? "–"),
      h("td", { class: "nowrap" }, fmt.timeEl(a.raised_at ?? a.ts, clock.now()), h("span", { class: "sub", dataset: { ago: fmt.toMs(a.raised_at ?? a.ts) } }, "")),
      h(
        "td",
        {},
        h("span", { class: `status-pill status-${a.status}` }, a.status),
        a.acknowledged_by && a.status !== "open" ? h("span", { class: "sub" }, `by ${a.acknowledged_by}`) : null,
      ),
      h(
        "td",
        { class: `esc esc-${a.escalation_level || 0}`, title: "Escalation level: missed deadlines" },
        String(a.escalation_level ?? 0),
      ),
      h(
        "td",
        {},
        h(
          "span",
          { class: "due", dataset: { due: nextDeadline(a) ?? "" } },
          h("span", { class: "cd" }, "–"),
          h("span", { class: "sub" }, dueWhat(a, clock.now())),
        ),
      ),
      h(
        "td",
        { class: "actions" },
        canAct && a.status === "open"
          ? h("button", { type: "button", class: "small", dataset: { act: "ack" }, title: "Acknowledge (a)" }, "Ack")
          : null,
        canAct && ACTIVE.has(a.status)
          ? h("button", { type: "button", class: "small", dataset: { act: "resolve" }, title: "Resolve (r)" }, "Resolve")
          : null,
        h("button", { type: "button", class: "small ghost", dataset: { act: "history" }, title: "History (h)" }, "History"),
      ),
    );
  }

  /** Once a second: countdowns and "x min ago" without rebuilding rows. */
  tick() {
    const now = this.ctx.clock.now();
    for (const tr of this.rows.values()) {
      const due = tr.querySelector(".due");
      const ms = Number(due.dataset.due);
      const cd = due.dataset.due ? fmt.countdown(ms - now) : fmt.countdown(null);
      due.querySelector(".cd").textContent = cd.text;
      due.classList.toggle("overdue", cd.overdue);
      due.classList.toggle("urgent", cd.urgent);
      const ago = tr.querySelector("[data-ago]");
      if (ago && ago.dataset.ago) ago.textContent = fmt.age(now - Number(ago.dataset.ago));
    }
    this.detail.querySelectorAll("[data-countdown]").forEach((el) => {
      const cd = fmt.countdown(Number(el.dataset.countdown) - now);
      el.textContent = cd.text;
      el.classList.toggle("overdue", cd.overdue);
      el.classList.toggle("urgent", cd.urgent);
    });
  }

  /** After a dialog: focus goes back to the selected row if it has nowhere better to be. */
  restoreFocus() {
    const active = document.activeElement;
    if (active && active !== document.body && document.contains(active)) return;
    if (document.body.dataset.view !== "queue") return;
    this.rows.get(this.selectedId)?.focus({ preventScroll: true });
  }

  select(id, { focus = false } = {}) {
    if (!id) return;
    this.selectedId = id;
    this.render();
    const tr = this.rows.get(id);
    if (tr) {
      tr.scrollIntoView({ block: "nearest" });
      if (focus) tr.focus({ preventScroll: true });
    }
  }

  /** Select an alarm from elsewhere (live view, banner); widens filters that would hide it. */
  show(id) {
    const a = this.ctx.state.alarms.get(id);
    if (a && !this.list().some((x) => x.alarm_id === id)) {
      this.filters = { status: ACTIVE.has(a.status) ? "active" : "resolved", type: "", shipper: "", severity: "" };
      for (const [k, v] of Object.entries(this.filters)) {
        const el = document.getElementById(`f-${k}`);
        if (el) el.value = v;
      }
    }
    this.select(id, { focus: true });
  }

  move(delta) {
    const ids = this.list().map((a) => a.alarm_id);
    if (!ids.length) return;
    const i = ids.indexOf(this.selectedId);
    const next = ids[Math.min(Math.max((i < 0 ? 0 : i) + delta, 0), ids.length - 1)];
    this.select(next, { focus: true });
  }

  act(what) {
    const a = this.selected;
    if (!a) return;
    const { actions } = this.ctx;
    if (what === "ack") actions.openAck(a);
    else if (what === "resolve") actions.openResolve(a);
    else if (what === "history") actions.openHistory(a);
    else if (what === "map") this.ctx.showOnMap(a.trip_id);
  }

  renderDetail() {
    const a = this.selected;
    const key = a ? `${a.alarm_id}|${a.status}|${a.version ?? ""}|${a.escalation_level}|${(a.history || []).length}|${this.ctx.who.ack}` : "";
    if (key === this.detailKey) return;
    this.detailKey = key;
    const hadFocus = this.detail.contains(document.activeElement) ? document.activeElement.dataset.act : null;
    if (!a) {
      fill(this.detail, h("p", { class: "muted" }, "Select an alarm to see its details, deadlines and history."));
      return;
    }
    const { clock, who, state } = this.ctx;
    const now = clock.now();
    const trip = state.trips.get(a.trip_id);
    const canAct = who.ack !== false;
    const ackDue = fmt.toMs(a.ack_due);
    const resolveDue = fmt.toMs(a.resolve_due);
    fill(this.detail,
      h(
        "div",
        { class: "detail-head" },
        h("span", { class: `sev sev-${a.severity}` }, a.severity),
        h("span", { class: `status-pill status-${a.status}` }, a.status),
        a.escalation_level ? h("span", { class: "esc" }, `escalated ×${a.escalation_level}`) : null,
      ),
      h("h3", {}, fmt.label(a.type)),
      h("p", { class: "muted small" }, summarize(a)),
      h(
        "div",
        { class: "deadline-box" },
        h(
          "div",
          {},
          h("span", { class: "muted small" }, "Acknowledge by ", fmt.timeEl(ackDue, now, { seconds: false })),
          a.status === "open"
            ? h("span", { class: "due", dataset: { countdown: ackDue } }, "–")
            : h("span", { class: "done" }, "✓ acknowledged", a.acknowledged_by ? ` by ${a.acknowledged_by}` : ""),
        ),
        h(
          "div",
          {},
          h("span", { class: "muted small" }, "Resolve by ", fmt.timeEl(resolveDue, now, { seconds: false })),
          a.status !== "resolved"
            ? h("span", { class: "due", dataset: { countdown: resolveDue } }, "–")
            : h("span", { class: "done" }, "✓ resolved", a.resolved_by ? ` by ${a.resolved_by}` : ""),
        ),
      ),
      h(
        "div",
        { class: "row-actions" },
        canAct && a.status === "open" ? h("button", { type: "button", class: "primary", dataset: { act: "ack" }, onclick: () => this.act("ack") }, "Acknowledge (a)") : null,
        canAct && ACTIVE.has(a.status) ? h("button", { type: "button", class: a.status === "open" ? "" : "primary", dataset: { act: "resolve" }, onclick: () => this.act("resolve") }, "Resolve (r)") : null,
        h("button", { type: "button", class: "ghost small", dataset: { act: "history" }, onclick: () => this.act("history") }, "History (h)"),
        a.trip_id ? h("button", { type: "button", class: "ghost small", dataset: { act: "map" }, onclick: () => this.act("map") }, "Map (g)") : null,
        a.trip_id && who.replay !== false ? h("button", { type: "button", class: "ghost small", dataset: { act: "replay" }, onclick: () => this.ctx.replayTrip(a.trip_id, fmt.toMs(a.ts)) }, "Replay") : null,
      ),
      !canAct ? h("p", { class: "notice notice-info" }, "This key can read alarms but not acknowledge or resolve them.") : null,
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "Trip"),
        h("dd", {}, a.trip_id ?? "–", trip?.vehicle ? ` · ${trip.vehicle}` : ""),
        h("dt", {}, "Shipper"),
        h("dd", {}, a.shipper ?? "–"),
        h("dt", {}, "Device"),
        h("dd", {}, a.device_id ?? "–"),
        h("dt", {}, "Event time"),
        h("dd", {}, fmt.timeEl(a.ts, now)),
        h("dt", {}, "Raised"),
        h("dd", {}, fmt.timeEl(a.raised_at, now)),
        h("dt", {}, "Position"),
        h("dd", {}, Number.isFinite(a.lat) ? `${a.lat.toFixed(5)}, ${a.lon.toFixed(5)}` : "unknown"),
        ...detailRows(a.details),
      ),
      a.resolution
        ? h(
            "div",
            { class: "notice notice-info" },
            h("b", {}, "Handling: "),
            fmt.label(a.resolution.cause),
            a.resolution.action ? h("div", {}, `Action: ${a.resolution.action}`) : null,
            a.resolution.feedback ? h("div", {}, `Customer feedback: ${a.resolution.feedback}`) : null,
          )
        : null,
      h("h2", { class: "panel-title" }, "History"),
      h("ol", { class: "history" }, ...historyItems(a, now)),
    );
    if (hadFocus) this.detail.querySelector(`[data-act="${hadFocus}"]`)?.focus();
    this.tick();
    // The list view may not carry history: fetch it once for the selected alarm.
    if (!(a.history || []).length && !a._historyTried) {
      a._historyTried = true;
      this.ctx.actions.reload(a.alarm_id).catch(() => {});
    }
  }
}

function rowKey(a, who, trip) {
  return [a.status, a.escalation_level, a.ack_due, a.resolve_due, a.acknowledged_by, who.ack, trip?.vehicle].join("|");
}

function dueWhat(a, now) {
  if (a.status === "open") return `ack by ${fmt.localText(fmt.toMs(a.ack_due), now, { seconds: false })}`;
  if (a.status === "acknowledged") return `resolve by ${fmt.localText(fmt.toMs(a.resolve_due), now, { seconds: false })}`;
  return a.resolution?.cause ? fmt.label(a.resolution.cause) : "resolved";
}

/** A one-line reading of an alarm's details: "1.2 km off route", "stopped 42 min", … */
export function summarize(a) {
  const d = a.details || {};
  const parts = [];
  if (d.distance_m !== undefined) parts.push(`${fmt.distance(d.distance_m)} from route`);
  if (d.duration_s !== undefined) parts.push(`for ${fmt.duration(d.duration_s * 1000)}`);
  if (d.duration_min !== undefined) parts.push(`for ${fmt.duration(d.duration_min * 60000)}`);
  if (d.event) parts.push(`lock event ${String(d.event).replace(/_/g, " ")}`);
  if (d.stop_id) parts.push(`stop ${d.stop_id}`);
  if (d.speed_kmh !== undefined) parts.push(fmt.speed(d.speed_kmh));
  if (d.battery_pct !== undefined) parts.push(`battery ${d.battery_pct} %`);
  if (d.position_unknown) parts.push("position unknown");
  if (d.detected_late) parts.push("detected late (backlog)");
  if (d.episode_ended_at) parts.push(`ended ${fmt.localText(fmt.toMs(d.episode_ended_at))}`);
  if (d.geofence || d.geofence_id) parts.push(`fence ${d.geofence || d.geofence_id}`);
  return parts.join(" · ") || (Number.isFinite(a.lat) ? `at ${a.lat.toFixed(4)}, ${a.lon.toFixed(4)}` : "");
}

/** Details as <dt>/<dd> pairs, with units read from the key's suffix. */
function detailRows(details) {
  const out = [];
  for (const [k, v] of Object.entries(details || {})) {
    if (v === null || v === undefined || typeof v === "object") continue;
    // The unit goes with the value ("836 m"), not the name.
    const name = fmt.label(k.replace(/_(m|s|ms|min|kmh|pct)$/, ""));
    let text = String(v);
    if (typeof v === "number" && v > 1e12 && /(_at|_since|_ts|_ms)$/.test(k)) {
      out.push(h("dt", {}, name), h("dd", {}, fmt.timeEl(v)));
      continue;
    }
    if (typeof v === "number") {
      if (k.endsWith("_m")) text = fmt.distance(v);
      else if (k.endsWith("_s")) text = fmt.duration(v * 1000);
      else if (k.endsWith("_min")) text = `${Math.round(v)} min`;
      else if (k.endsWith("_kmh")) text = fmt.speed(v);
      else if (k.endsWith("_pct")) text = `${v} %`;
      else text = Number.isInteger(v) ? String(v) : v.toFixed(2);
    } else if (typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)) {
      out.push(h("dt", {}, name), h("dd", {}, fmt.timeEl(v)));
      continue;
    }
    out.push(h("dt", {}, name), h("dd", {}, text));
  }
  return out;
}
