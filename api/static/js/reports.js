// Reports: the KPI report, the exception ledger (every alarm and exception of a period with
// its deadlines, cause, action, notes and feedback) and the exceptions people reported.
// CSV buttons fetch with the key and `Accept: text/csv` and save the answer as a file.

import { asList, query } from "./api.js";
import { errorText } from "./actions.js";
import { ExceptionForm, exceptionItem, loadExceptions } from "./exceptions.js";
import * as fmt from "./format.js";

const { h, fill } = fmt;
const DAY = 24 * 3600 * 1000;

const dateText = (ms) => new Date(ms).toISOString().slice(0, 10);

export class ReportsView {
  constructor(ctx) {
    this.ctx = ctx; // {api, state, clock, who, toast}
    this.loaded = false;
    this.excForm = new ExceptionForm(ctx, { onCreated: () => this.loadExceptions() });
    ctx.exceptionForm = this.excForm;
    const now = ctx.clock.now();
    document.getElementById("r-from").value = dateText(now - 7 * DAY);
    document.getElementById("r-to").value = dateText(now);
    if (ctx.who.shipper) document.getElementById("r-shipper-wrap").hidden = true;
    document.getElementById("reports-filters").addEventListener("submit", (e) => {
      e.preventDefault();
      this.load();
    });
    document.querySelectorAll("#view-reports [data-csv]").forEach((b) =>
      b.addEventListener("click", () => this.downloadCsv(b.dataset.csv, b)),
    );
    document.getElementById("btn-new-exception").addEventListener("click", () => this.excForm.open());
  }

  activate() {
    if (!this.loaded) this.load();
  }

  /** from/to of the form as RFC 3339 (the end date is included: to = its next midnight). */
  params() {
    const from = document.getElementById("r-from").value;
    const to = document.getElementById("r-to").value;
    const shipper = document.getElementById("r-shipper").value.trim();
    return {
      from: from ? `${from}T00:00:00Z` : "",
      to: to ? new Date(Date.parse(`${to}T00:00:00Z`) + DAY).toISOString() : "",
      shipper: this.ctx.who.shipper ? "" : shipper,
    };
  }

  async load() {
    this.loaded = true;
    const status = document.getElementById("reports-status");
    status.textContent = "Loading…";
    const p = this.params();
    const results = await Promise.allSettled([this.loadKpi(p), this.loadLedger(p), this.loadExceptions()]);
    const failed = results.filter((r) => r.status === "rejected").length;
    status.textContent = failed ? `${failed} of 3 parts could not be loaded` : `as of ${fmt.localText(this.ctx.clock.now())}`;
  }

  async loadKpi(p) {
    const el = document.getElementById("kpi-body");
    try {
      const kpi = await this.ctx.api.get(`/v1/reports/kpi${query(p)}`);
      fill(el, renderKpi(kpi));
    } catch (e) {
      fill(el, notice(`The KPI report could not be loaded: ${errorText(e)}`));
      throw e;
    }
  }

  async loadLedger(p) {
    const table = document.getElementById("ledger-table");
    try {
      const data = await this.ctx.api.get(`/v1/reports/ledger${query(p)}`);
      const rows = asList(data, "entries", "rows", "ledger");
      fill(table, ledgerHead(), h("tbody", {}, rows.length ? rows.map((r) => ledgerRow(r, this.ctx.clock.now())) : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "Nothing in this period."))));
    } catch (e) {
      fill(table, h("tbody", {}, h("tr", {}, h("td", { class: "notice notice-warn" }, `The ledger could not be loaded: ${errorText(e)}`))));
      throw e;
    }
  }

  async loadExceptions() {
    const el = document.getElementById("exceptions-list");
    try {
      const list = await loadExceptions(this.ctx);
      const now = this.ctx.clock.now();
      fill(el, list.length ? list.map((x) => exceptionItem(x, now)) : h("li", { class: "muted small" }, "No exception reported."));
    } catch (e) {
      fill(el, h("li", { class: "notice notice-warn" }, `Exceptions could not be loaded: ${errorText(e)}`));
      throw e;
    }
  }

  async downloadCsv(what, button) {
    const p = this.params();
    const path = {
      kpi: `/v1/reports/kpi${query(p)}`,
      ledger: `/v1/reports/ledger${query(p)}`,
      alarms: `/v1/alarms${query({ since: p.from, shipper: p.shipper, limit: 10000 })}`,
    }[what];
    const stamp = `${document.getElementById("r-from").value}_${document.getElementById("r-to").value}`;
    button.disabled = true;
    try {
      await this.ctx.api.download(path, `cargowatch-${what}-${stamp}.csv`);
    } catch (e) {
      this.ctx.toast(`The ${what} CSV could not be downloaded: ${errorText(e)}`, "err");
    } finally {
      button.disabled = false;
    }
  }
}

function notice(text) {
  return h("p", { class: "notice notice-warn" }, text);
}

const pct = (x) => (x === null || x === undefined || !Number.isFinite(Number(x)) ? "–" : `${Math.round(Number(x) * 1000) / 10} %`);
const secs = (x) => (x === null || x === undefined ? "–" : fmt.duration(Number(x) * 1000));

/** The KPI answer: headline figures, then every table it carries (by type, severity, …). */
export function renderKpi(k) {
  const tiles = [
    ["Alarms", k.alarms ?? "–"],
    ["Acknowledged on time", pct(k.acknowledge?.on_time_rate)],
    ["Resolved on time", pct(k.resolve?.on_time_rate)],
    ["Mean time to acknowledge", secs(k.acknowledge?.mean_time_s)],
    ["Mean time to resolve", secs(k.resolve?.mean_time_s)],
    ["False-alarm rate", pct(k.false_alarm_rate)],
  ];
  const fb = k.feedback || {};
  if (k.feedback) tiles.push(["Feedback accepted / disputed", `${fb.accepted ?? 0} / ${fb.disputed ?? 0}`]);
  if (k.exceptions !== undefined && typeof k.exceptions !== "object") tiles.push(["Exceptions", k.exceptions]);
  const tables = [];
  for (const [name, value] of Object.entries(k)) {
    if (!value || typeof value !== "object" || Array.isArray(value)) continue;
    if (["acknowledge", "resolve", "feedback"].includes(name)) continue;
    tables.push(kvTable(fmt.label(name), value));
  }
  return h(
    "div",
    { class: "kpi", "data-testid": "kpi" },
    h("div", { class: "kpi-tiles" }, tiles.map(([t, v]) => h("div", { class: "kpi-tile" }, h("b", {}, String(v)), h("span", {}, t)))),
    h("div", { class: "kpi-tables" }, tables),
  );
}

/** {a: 1, b: {x: 2}} as a small table; nested objects become "x 2 · y 3". */
function kvTable(title, obj) {
  const rows = Object.entries(obj).map(([k, v]) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, /^[A-Z_]+$/.test(k) ? fmt.label(k) : k),
      h(
        "td",
        {},
        v && typeof v === "object"
          ? Object.entries(v)
              .map(([a, b]) => `${a.replace(/_/g, " ")} ${typeof b === "number" && b <= 1 && /rate/.test(a) ? pct(b) : b ?? "–"}`)
              .join(" · ")
          : String(v ?? "–"),
      ),
    ),
  );
  return h("table", { class: "kv-table" }, h("caption", {}, title), h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "muted" }, "none"))));
}

function ledgerHead() {
  return h(
    "thead",
    {},
    h(
      "tr",
      {},
      ["Kind", "Type", "Severity", "Trip", "Shipper", "Raised", "Ack", "Resolve", "Cause · action", "Notes · feedback"].map((t) =>
        h("th", { scope: "col" }, t),
      ),
    ),
  );
}

/** Met / missed / pending from a ledger entry's flags, whatever their exact names. */
function met(r, which) {
  const v = r[`${which}_met`] ?? r[`${which}_on_time`] ?? r.deadlines?.[which] ?? r.deadlines?.[`${which}_met`];
  if (v === true || v === "met") return h("span", { class: "met" }, "met");
  if (v === false || v === "missed") return h("span", { class: "missed" }, "missed");
  return h("span", { class: "muted" }, v === null || v === undefined ? "–" : String(v));
}

function ledgerRow(r, now) {
  const kind = r.kind ?? (r.exception_id ? "exception" : "alarm");
  const notes = Array.isArray(r.notes) ? r.notes.length : r.notes ? 1 : 0;
  const fb = r.feedback && typeof r.feedback === "object" ? r.feedback : r.feedback_verdict ? { verdict: r.feedback_verdict, comment: r.feedback_comment } : null;
  const res = r.resolution || {};
  return h(
    "tr",
    { dataset: { id: r.alarm_id ?? r.exception_id ?? r.id ?? "", kind } },
    h("td", {}, kind),
    h("td", {}, fmt.label(r.type)),
    h("td", {}, r.severity ? h("span", { class: `sev sev-${r.severity}` }, r.severity) : "–"),
    h("td", { class: "nowrap" }, r.trip_id ?? "–"),
    h("td", {}, r.shipper ?? "–"),
    h("td", { class: "nowrap" }, fmt.timeEl(r.raised_at ?? r.ts, now)),
    h("td", {}, met(r, "ack")),
    h("td", {}, met(r, "resolve")),
    h("td", {}, fmt.label(r.cause ?? res.cause ?? ""), (r.action ?? res.action) ? h("span", { class: "sub" }, r.action ?? res.action) : null),
    h(
      "td",
      {},
      notes ? `${notes} note${notes > 1 ? "s" : ""}` : "",
      fb ? h("span", { class: `sub feedback-${fb.verdict}` }, `${fb.verdict}${fb.comment ? `: ${fb.comment}` : ""}`) : null,
    ),
  );
}
