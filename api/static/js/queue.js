// The alarm queue, the desk's main tool: open and acknowledged alarms, nearest deadline
// first, with live countdowns, filters, and acknowledge / resolve / history per row.
// Keyboard: the table is one tab stop (roving tabindex); j/k move, a/r/h act on the selection.

import { asList, query } from "./api.js";
import { errorText, historyItems } from "./actions.js";
import * as fmt from "./format.js";
import { knownPlaces, nearestPlaceText } from "./places.js";
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
  "RISK_ZONE_ENTRY",
];
const CONTACTS = ["carrier", "driver", "shipper", "consignee", "police", "other"];

export class QueueView {
  constructor(ctx) {
    this.ctx = ctx; // {state, api, clock, who, actions, showOnMap(tripId), replayTrip(id)}
    this.body = document.getElementById("queue-body");
    this.detail = document.getElementById("queue-detail");
    this.rows = new Map();
    this.carriers = new Map(); // trip_id -> carrier {name, contacts}, from full alarm reads
    this.selectedId = null;
    this.filters = { status: "active", type: "", shipper: "", severity: "", mine: false };
    this.resolved = []; // the "resolved (24 h)" list, loaded on demand
    this.fresh = new Set();
    this.order = [];
    this.detailKey = null;

    const typeSel = document.getElementById("f-type");
    typeSel.append(...TYPES.map((t) => h("option", { value: t }, fmt.label(t))));
    if (ctx.who.allShippers === false || ctx.who.shipper) document.getElementById("f-shipper-wrap").hidden = true;
    if (ctx.who.ack === false || !ctx.who.name) document.getElementById("f-mine-wrap").hidden = true;
    document.getElementById("queue-filters").addEventListener("change", (e) => {
      this.filters[e.target.name] = e.target.type === "checkbox" ? e.target.checked : e.target.value;
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
      if (a?.carrier && a.trip_id) this.carriers.set(a.trip_id, a.carrier);
      if (a && e.detail.isNew && a.severity === "critical" && a.status === "open") this.followUrgent(a);
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
        (!f.severity || a.severity === f.severity) &&
        (!f.mine || (a.assigned_to && a.assigned_to === this.ctx.who.name)),
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
      // The selected alarm left the list (resolved, filtered): the most urgent one is next.
      this.selectedId = list.length ? list[0].alarm_id : null;
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
      h("td", { class: "alarm-type" }, fmt.label(a.type), h("span", { class: "sub" }, summarize(a, trip, state.fences))),
      h("td", { class: "nowrap" }, a.trip_id ?? "–", h("span", { class: "sub" }, trip?.vehicle || a.device_id || "")),
      h("td", {}, a.shipper ?? "–"),
      h("td", { class: "nowrap" }, fmt.timeEl(a.raised_at ?? a.ts, clock.now()), h("span", { class: "sub", dataset: { ago: fmt.toMs(a.raised_at ?? a.ts) } }, "")),
      h(
        "td",
        {},
        h("span", { class: `status-pill status-${a.status}` }, a.status),
        a.assigned_to
          ? h("span", { class: "sub owner", title: "Assigned to" }, a.assigned_to === who.name ? `▸ ${a.assigned_to} (me)` : `▸ ${a.assigned_to}`)
          : a.acknowledged_by && a.status !== "open"
            ? h("span", { class: "sub" }, `by ${a.acknowledged_by}`)
            : null,
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
    if (!this.ctx.state.alarms.has(id) && !this.resolved.some((x) => x.alarm_id === id)) {
      // A link to an alarm the queue does not hold (resolved, or not loaded yet): read it.
      this.ctx.actions
        .reload(id)
        .then((a) => a && this.show(id))
        .catch((e) => this.ctx.toast(`Alarm ${id}: ${errorText(e)}`, "err"));
      return;
    }
    const a = this.ctx.state.alarms.get(id);
    if (a && !this.list().some((x) => x.alarm_id === id)) {
      this.filters = { status: ACTIVE.has(a.status) ? "active" : "resolved", type: "", shipper: "", severity: "", mine: false };
      for (const [k, v] of Object.entries(this.filters)) {
        const el = document.getElementById(`f-${k}`);
        if (el && el.type === "checkbox") el.checked = v;
        else if (el) el.value = v;
      }
    }
    this.select(id, { focus: true });
  }

  /**
   * A new critical alarm takes the detail pane, unless the operator is in the middle of
   * something: a dialog open, or typing in the pane (call log, assignment, feedback).
   */
  followUrgent(a) {
    if (document.querySelector("dialog[open]")) return;
    const active = document.activeElement;
    if (active && this.detail.contains(active) && ["INPUT", "TEXTAREA", "SELECT"].includes(active.tagName)) return;
    if ([...this.detail.querySelectorAll("[data-keep]")].some((el) => el.value && el.tagName !== "SELECT")) return;
    const cur = this.selected;
    if (cur && cur.severity === "critical" && cur.status === "open") return; // already on one
    this.selectedId = a.alarm_id;
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
    const carrier = a ? (a.carrier ?? this.carriers.get(a.trip_id) ?? null) : null;
    const key = a
      ? [a.alarm_id, a.status, a.version ?? "", a.escalation_level, (a.history || []).length, a.assigned_to, JSON.stringify(a.feedback ?? null), carrier?.name, this.ctx.who.ack].join("|")
      : "";
    if (key === this.detailKey) return;
    const sameAlarm = a && this.detailKey?.startsWith(`${a.alarm_id}|`);
    this.detailKey = key;
    const hadFocus = this.detail.contains(document.activeElement) ? document.activeElement.dataset.act || document.activeElement.id : null;
    // What the operator was typing survives a redraw of the same alarm (a note by someone else).
    const kept = sameAlarm ? Object.fromEntries([...this.detail.querySelectorAll("[data-keep]")].map((el) => [el.id, el.value])) : {};
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
    const place = nearestPlaceText(a.lat, a.lon, knownPlaces(trip, state.fences));
    fill(this.detail,
      h(
        "div",
        { class: "detail-head" },
        h("span", { class: `sev sev-${a.severity}` }, a.severity),
        h("span", { class: `status-pill status-${a.status}` }, a.status),
        a.escalation_level ? h("span", { class: "esc" }, `escalated ×${a.escalation_level}`) : null,
      ),
      h("h3", {}, fmt.label(a.type)),
      h("p", { class: "muted small" }, summarize(a, trip, state.fences)),
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
        a.trip_id && who.role !== "fleet" && this.ctx.exceptionForm
          ? h("button", { type: "button", class: "ghost small", dataset: { act: "exception" }, onclick: () => this.ctx.exceptionForm.open(a.trip_id) }, "Report exception")
          : null,
      ),
      !canAct ? h("p", { class: "notice notice-info" }, "This key can read alarms but not acknowledge or resolve them.") : null,
      this.assignBox(a),
      carrierCard(carrier),
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
        h(
          "dd",
          {},
          place ? h("span", { class: "place" }, place) : null,
          Number.isFinite(a.lat) ? h("span", { class: place ? "sub" : "" }, `${a.lat.toFixed(5)}, ${a.lon.toFixed(5)}`) : place ? null : "unknown",
        ),
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
      this.feedbackBox(a),
      canAct && ACTIVE.has(a.status) ? this.callLogForm(a) : null,
      h("h2", { class: "panel-title" }, "History"),
      h("ol", { class: "history", id: "detail-history" }, ...historyItems(a, now)),
    );
    for (const [id, value] of Object.entries(kept)) {
      const el = this.detail.querySelector(`#${CSS.escape(id)}`);
      if (el) el.value = value;
    }
    if (hadFocus) (this.detail.querySelector(`[data-act="${hadFocus}"]`) || this.detail.querySelector(`#${CSS.escape(hadFocus)}`))?.focus();
    this.tick();
    // The list does not carry history or the trip's carrier: read the alarm once when selected.
    if (!a._fullTried) {
      a._fullTried = true;
      this.ctx.actions.reload(a.alarm_id).catch(() => {});
    }
  }

  /** Whose alarm it is; desk and admin keys may take it or hand it to a name. */
  assignBox(a) {
    const { who } = this.ctx;
    const mine = a.assigned_to && a.assigned_to === who.name;
    const canAssign = who.ack !== false && ACTIVE.has(a.status);
    if (!canAssign && !a.assigned_to) return null;
    return h(
      "form",
      {
        class: "assign",
        id: "assign-form",
        onsubmit: (e) => {
          e.preventDefault();
          const to = this.detail.querySelector("#assign-to").value.trim();
          if (to) this.post(a, "assign", { to }, `Assigned to ${to}`);
        },
      },
      h("span", { class: "muted small" }, "Owner "),
      h("b", { class: "owner", id: "detail-owner" }, a.assigned_to ? (mine ? `${a.assigned_to} (me)` : a.assigned_to) : "nobody"),
      canAssign && !mine && who.name
        ? h("button", { type: "button", class: "small", id: "assign-me", onclick: () => this.post(a, "assign", { to: who.name }, "Assigned to you") }, "Assign to me")
        : null,
      canAssign
        ? h(
            "span",
            { class: "assign-other" },
            h("input", { id: "assign-to", "data-keep": "1", size: "10", maxlength: "128", placeholder: "name", "aria-label": "Assign to (name)", spellcheck: "false" }),
            h("button", { type: "submit", class: "small ghost" }, "Assign"),
          )
        : null,
    );
  }

  /** The call log between acknowledge and resolve: whom, what was said, what came of it. */
  callLogForm(a) {
    const submit = async (e) => {
      e.preventDefault();
      const f = e.target;
      const text = f.querySelector("#note-text").value.trim();
      const err = f.querySelector(".error");
      if (!text) {
        err.textContent = "Write what was said.";
        err.hidden = false;
        return;
      }
      const body = { contact: f.querySelector("#note-contact").value, text, outcome: f.querySelector("#note-outcome").value.trim() || null };
      f.querySelector("button[type=submit]").disabled = true;
      const ok = await this.post(a, "notes", body, "Call logged", err);
      if (ok) {
        // The redraw restores kept fields: clear them first.
        this.detail.querySelectorAll("#note-text, #note-outcome").forEach((el) => (el.value = ""));
        this.detailKey = null;
        this.renderDetail();
      } else f.querySelector("button[type=submit]").disabled = false;
    };
    return h(
      "form",
      { class: "call-log", id: "call-log", onsubmit: submit },
      h("h2", { class: "panel-title" }, "Call log"),
      h(
        "label",
        {},
        "Contact ",
        h("select", { id: "note-contact", "data-keep": "1" }, CONTACTS.map((c) => h("option", { value: c }, fmt.label(c)))),
      ),
      h("label", { for: "note-text" }, "What was said"),
      h("textarea", { id: "note-text", "data-keep": "1", rows: "2", maxlength: "4000", placeholder: "driver: stopped by police check, 20 min" }),
      h("label", { for: "note-outcome" }, "Outcome"),
      h("input", { id: "note-outcome", "data-keep": "1", maxlength: "1000", placeholder: "call back at 14:30" }),
      h("p", { class: "error", role: "alert", hidden: true }),
      h("div", { class: "dlg-actions" }, h("button", { type: "submit", class: "small primary" }, "Log call")),
    );
  }

  /** The shipper's verdict on a resolved alarm: shown to the desk, given by the shipper. */
  feedbackBox(a) {
    const fb = a.feedback;
    if (fb) {
      return h(
        "div",
        { class: `notice feedback feedback-${fb.verdict}`, id: "detail-feedback" },
        h("b", {}, "Shipper feedback: "),
        fb.verdict === "disputed" ? "✗ disputed" : "✓ accepted",
        fb.comment ? h("div", {}, fb.comment) : null,
        fb.by || fb.at ? h("div", { class: "muted small" }, fb.by ? `by ${fb.by} ` : "", fb.at ? fmt.timeEl(fb.at, this.ctx.clock.now()) : "") : null,
      );
    }
    if (this.ctx.who.role !== "shipper" || a.status !== "resolved") return null;
    return h(
      "form",
      {
        class: "feedback-form",
        id: "feedback-form",
        onsubmit: (e) => {
          e.preventDefault();
          const f = e.target;
          const verdict = f.querySelector("input[name=verdict]:checked")?.value;
          const err = f.querySelector(".error");
          if (!verdict) {
            err.textContent = "Accept or dispute the handling.";
            err.hidden = false;
            return;
          }
          this.post(a, "feedback", { verdict, comment: f.querySelector("#feedback-comment").value.trim() || null }, "Feedback sent", err);
        },
      },
      h("h2", { class: "panel-title" }, "Your feedback on the handling"),
      h("label", { class: "check" }, h("input", { type: "radio", name: "verdict", value: "accepted" }), " Accepted"),
      h("label", { class: "check" }, h("input", { type: "radio", name: "verdict", value: "disputed" }), " Disputed"),
      h("textarea", { id: "feedback-comment", "data-keep": "1", rows: "2", maxlength: "4000", placeholder: "comment (optional)", "aria-label": "Comment" }),
      h("p", { class: "error", role: "alert", hidden: true }),
      h("div", { class: "dlg-actions" }, h("button", { type: "submit", class: "small primary" }, "Send feedback")),
    );
  }

  /** POST /v1/alarms/{id}/{verb}; the alarm is read again; a refusal is one line. */
  async post(a, verb, body, doneText, errEl = null) {
    try {
      const answer = await this.ctx.api.post(`/v1/alarms/${encodeURIComponent(a.alarm_id)}/${verb}`, body);
      const updated = answer?.alarm ?? answer;
      if (updated?.alarm_id && updated.history) this.ctx.state.upsertAlarm(updated);
      else await this.ctx.actions.reload(a.alarm_id);
      this.ctx.toast(doneText);
      return true;
    } catch (e) {
      const text = e.status === 404 && !e.code?.includes("not_found") ? `This server does not offer ${verb} yet (404).` : errorText(e);
      if (errEl) {
        errEl.textContent = text;
        errEl.hidden = false;
      } else this.ctx.toast(text, "err");
      return false;
    }
  }
}

/** Whom to call: the trip's carrier and its contacts, each with tel: and mailto: links. */
function carrierCard(carrier) {
  if (!carrier) return null;
  const contacts = Array.isArray(carrier.contacts) ? carrier.contacts : [];
  return h(
    "section",
    { class: "carrier-card", id: "carrier-card", "aria-label": "Carrier contacts" },
    h("h2", { class: "panel-title" }, "Carrier ", h("b", {}, carrier.name || carrier.carrier_id || "")),
    contacts.length
      ? h(
          "ul",
          { class: "contacts" },
          contacts.map((c) =>
            h(
              "li",
              {},
              h("span", { class: "contact-name" }, c.name || "–", c.role ? h("span", { class: "muted small" }, ` · ${c.role}`) : null),
              c.phone ? h("a", { href: `tel:${String(c.phone).replace(/[^\d+]/g, "")}`, class: "tel" }, `☎ ${c.phone}`) : null,
              c.email ? h("a", { href: `mailto:${c.email}`, class: "mail" }, `✉ ${c.email}`) : null,
            ),
          ),
        )
      : h("p", { class: "muted small" }, "No contact recorded for this carrier."),
  );
}

function rowKey(a, who, trip) {
  return [a.status, a.escalation_level, a.ack_due, a.resolve_due, a.acknowledged_by, a.assigned_to, who.ack, trip?.vehicle].join("|");
}

function dueWhat(a, now) {
  if (a.status === "open") return `ack by ${fmt.localText(fmt.toMs(a.ack_due), now, { seconds: false })}`;
  if (a.status === "acknowledged") return `resolve by ${fmt.localText(fmt.toMs(a.resolve_due), now, { seconds: false })}`;
  return a.resolution?.cause ? fmt.label(a.resolution.cause) : "resolved";
}

/** A one-line reading of an alarm's details: "1.2 km off route", "stopped 42 min", … and
 * where: the nearest stop or place the desk knows, else the coordinates. */
export function summarize(a, trip = null, fences = []) {
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
  const place = nearestPlaceText(a.lat, a.lon, knownPlaces(trip, fences));
  if (place) parts.push(place);
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
