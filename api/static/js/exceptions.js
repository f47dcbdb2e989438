// Exceptions: what people report (damage, shortage, paperwork, time), the ledger's other
// half (contract §5). One dialog, opened from the reports view or from an alarm's trip; a
// desk, admin or the trip's own shipper key may report.

import { asList, query } from "./api.js";
import { errorText } from "./actions.js";
import * as fmt from "./format.js";

const { h, fill } = fmt;
export const EXCEPTION_TYPES = ["time", "damage", "quantity", "information", "other"];

export class ExceptionForm {
  constructor(ctx, { onCreated = () => {} } = {}) {
    this.ctx = ctx; // {api, state, toast}
    this.onCreated = onCreated;
    this.dlg = document.getElementById("dlg-exception");
    this.form = document.getElementById("form-exception");
    this.dlg.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", () => this.dlg.close()));
    this.dlg.addEventListener("click", (e) => {
      if (e.target === this.dlg) this.dlg.close();
    });
    this.form.querySelector("#exc-trip").addEventListener("change", () => this.fillStops());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
  }

  open(tripId = "") {
    const trips = [...this.ctx.state.trips.keys()].sort();
    fill(document.getElementById("exc-trips"), ...trips.map((t) => h("option", { value: t })));
    this.form.reset();
    this.form.querySelector("#exc-trip").value = tripId || "";
    this.fillStops();
    const err = this.form.querySelector(".error");
    err.hidden = true;
    this.form.querySelector("button[type=submit]").disabled = false;
    this.dlg.showModal();
    this.form.querySelector(tripId ? "#exc-type" : "#exc-trip").focus();
  }

  fillStops() {
    const trip = this.ctx.state.trips.get(this.form.querySelector("#exc-trip").value.trim());
    const stops = trip?.stops || [];
    fill(
      this.form.querySelector("#exc-stop"),
      h("option", { value: "" }, "—"),
      ...stops.map((s) => h("option", { value: s.stop_id }, `${s.stop_id}${s.name ? ` · ${s.name}` : ""}`)),
    );
  }

  async submit() {
    const f = this.form;
    const body = {
      trip_id: f.querySelector("#exc-trip").value.trim(),
      type: f.querySelector("#exc-type").value,
      description: f.querySelector("#exc-description").value.trim(),
    };
    const stop = f.querySelector("#exc-stop").value;
    if (stop) body.stop_id = stop;
    const err = f.querySelector(".error");
    if (!body.trip_id || !body.description) {
      err.textContent = "Give the trip and what happened.";
      err.hidden = false;
      return;
    }
    const submit = f.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const created = await this.ctx.api.post("/v1/exceptions", body);
      this.dlg.close();
      this.ctx.toast(`Exception reported: ${fmt.label(body.type)} · trip ${body.trip_id}`);
      this.onCreated(created);
    } catch (e) {
      err.textContent = e.status === 404 ? "No such trip for this key (404)." : errorText(e);
      err.hidden = false;
      submit.disabled = false;
    }
  }
}

/** GET /v1/exceptions, newest first; an error becomes a one-line notice in `el`. */
export async function loadExceptions(ctx, params = {}) {
  const data = await ctx.api.get(`/v1/exceptions${query({ limit: 500, ...params })}`);
  return asList(data, "exceptions")
    .filter((x) => ctx.state.inScope(x))
    .sort((a, b) => (fmt.toMs(b.raised_at ?? b.created_at) ?? 0) - (fmt.toMs(a.raised_at ?? a.created_at) ?? 0));
}

export function exceptionItem(x, now) {
  const id = x.exception_id ?? x.alarm_id ?? x.id;
  return h(
    "li",
    { dataset: { id: id ?? "", type: x.type ?? "" } },
    h(
      "div",
      { class: "exc-head" },
      h("span", { class: `sev sev-${x.severity || "major"}` }, x.severity || "major"),
      h("b", {}, fmt.label(x.type)),
      h("span", { class: `status-pill status-${x.status || "open"}` }, x.status || "open"),
    ),
    h("div", {}, x.description ?? x.details?.description ?? ""),
    h(
      "div",
      { class: "meta muted small" },
      `trip ${x.trip_id ?? "–"}`,
      x.stop_id ? ` · stop ${x.stop_id}` : "",
      x.shipper ? ` · ${x.shipper}` : "",
      " · ",
      fmt.timeEl(x.raised_at ?? x.created_at, now),
      x.raised_by || x.by ? ` · by ${x.raised_by || x.by}` : "",
    ),
  );
}
