// Acknowledge, resolve and history dialogs. Every answer of the API is shown plainly:
// 409 means someone else acted first (the page shows who and what, and reloads the alarm),
// 403 means this key has no right to act, 404 that the alarm is not visible to this key.

import { ApiError } from "./api.js";
import * as fmt from "./format.js";

const { h, fill } = fmt;

export const CAUSES = [
  "traffic_detour",
  "rest_stop",
  "breakdown",
  "police_check",
  "customer_instruction",
  "theft_suspected",
  "device_fault",
  "false_alarm",
  "other",
];

export class AlarmActions {
  constructor(ctx) {
    this.ctx = ctx; // {api, state, clock, who, operator(), toast(text, kind), onRightsChanged()}
    this.ackDlg = document.getElementById("dlg-ack");
    this.resolveDlg = document.getElementById("dlg-resolve");
    this.historyDlg = document.getElementById("dlg-history");
    this.current = null;
    for (const dlg of [this.ackDlg, this.resolveDlg, this.historyDlg, document.getElementById("dlg-help")]) {
      dlg.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", () => dlg.close()));
      // A click on the backdrop (the dialog box itself, outside its content) closes it too.
      dlg.addEventListener("click", (e) => {
        if (e.target === dlg) dlg.close();
      });
      // The browser returns focus to where it was; if that row was redrawn meanwhile, the
      // queue puts it on the selected row instead.
      dlg.addEventListener("close", () => setTimeout(() => this.ctx.afterDialog?.(), 0));
    }
    // Ctrl+Enter sends a form from inside its text fields (Enter there is a new line).
    for (const form of [document.getElementById("form-ack"), document.getElementById("form-resolve")]) {
      form.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
          e.preventDefault();
          form.requestSubmit();
        }
      });
    }
    document.getElementById("form-ack").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submitAck();
    });
    document.getElementById("form-resolve").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submitResolve();
    });
  }

  describe(alarm) {
    const trip = this.ctx.state.trips.get(alarm.trip_id);
    return `${fmt.label(alarm.type)} · ${alarm.severity} · trip ${alarm.trip_id ?? "–"}${trip?.vehicle ? " · " + trip.vehicle : ""}`;
  }

  prepare(dlg, alarm) {
    this.current = alarm;
    dlg.querySelector(".dlg-alarm").textContent = this.describe(alarm);
    const err = dlg.querySelector(".error");
    if (err) {
      err.hidden = true;
      err.className = "error";
      err.textContent = "";
    }
    const submit = dlg.querySelector("button[type=submit]");
    if (submit) submit.disabled = false;
    const cancel = dlg.querySelector("[data-close]");
    if (cancel && cancel.classList.contains("ghost")) cancel.textContent = "Cancel";
  }

  openAck(alarm) {
    if (!alarm || alarm.status !== "open" || this.ctx.who.ack === false) return;
    this.prepare(this.ackDlg, alarm);
    this.ackDlg.querySelector("#ack-note").value = "";
    this.ackDlg.showModal();
    this.ackDlg.querySelector("#ack-note").focus();
  }

  openResolve(alarm) {
    if (!alarm || !["open", "acknowledged"].includes(alarm.status) || this.ctx.who.ack === false) return;
    this.prepare(this.resolveDlg, alarm);
    this.resolveDlg.querySelector("#resolve-cause").value = "";
    this.resolveDlg.querySelector("#resolve-action").value = "";
    this.resolveDlg.querySelector("#resolve-feedback").value = "";
    this.resolveDlg.showModal();
    this.resolveDlg.querySelector("#resolve-cause").focus();
  }

  async openHistory(alarm) {
    if (!alarm) return;
    this.current = alarm;
    const list = this.historyDlg.querySelector("#history-list");
    this.historyDlg.querySelector(".dlg-alarm").textContent = this.describe(alarm);
    fill(list, h("li", { class: "muted" }, "Loading…"));
    this.historyDlg.showModal();
    let full = alarm;
    try {
      full = (await this.reload(alarm.alarm_id)) || alarm;
    } catch (e) {
      fill(list, h("li", { class: "error" }, errorText(e)));
      return;
    }
    fill(list, ...historyItems(full, this.ctx.clock.now()));
  }

  async reload(alarmId) {
    const doc = await this.ctx.api.get(`/v1/alarms/${encodeURIComponent(alarmId)}`);
    const alarm = doc?.alarm ?? doc;
    return this.ctx.state.upsertAlarm(alarm);
  }

  async submitAck() {
    const alarm = this.current;
    const note = this.ackDlg.querySelector("#ack-note").value.trim() || null;
    await this.send(this.ackDlg, alarm, "ack", { by: this.ctx.operator(), note }, "Acknowledged");
  }

  async submitResolve() {
    const alarm = this.current;
    const cause = this.resolveDlg.querySelector("#resolve-cause").value;
    if (!CAUSES.includes(cause)) {
      this.showError(this.resolveDlg, "Choose the cause of the alarm.");
      this.resolveDlg.querySelector("#resolve-cause").focus();
      return;
    }
    const body = {
      by: this.ctx.operator(),
      cause,
      action: this.resolveDlg.querySelector("#resolve-action").value.trim() || null,
      feedback: this.resolveDlg.querySelector("#resolve-feedback").value.trim() || null,
    };
    await this.send(this.resolveDlg, alarm, "resolve", body, "Resolved");
  }

  async send(dlg, alarm, verb, body, doneText) {
    const submit = dlg.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const answer = await this.ctx.api.post(`/v1/alarms/${encodeURIComponent(alarm.alarm_id)}/${verb}`, body);
      const updated = answer?.alarm ?? answer;
      if (updated?.alarm_id) this.ctx.state.upsertAlarm(updated);
      else await this.reload(alarm.alarm_id);
      dlg.close();
      this.ctx.toast(`${doneText}: ${this.describe(alarm)}`);
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      if (e.status === 409) {
        // Someone else acted first: show what the alarm is now, never overwrite it.
        let now = null;
        try {
          now = await this.reload(alarm.alarm_id);
        } catch {
          /* keep the message below */
        }
        const who = now?.status === "resolved" ? now?.resolved_by : now?.acknowledged_by;
        const last = (now?.history || []).at(-1);
        const when = fmt.toMs(last?.at ?? now?.resolved_at ?? now?.acknowledged_at);
        this.showError(
          dlg,
          `Conflict — someone else acted first. The alarm is now ${now?.status ?? "changed"}` +
            (who ? ` by ${who}` : "") +
            (when ? ` at ${fmt.localText(when, this.ctx.clock.now())}` : "") +
            `. Your ${verb === "ack" ? "acknowledgement" : "resolution"} was not recorded.`,
          "conflict",
        );
        this.ctx.toast("Conflict: someone else acted on this alarm first.", "warn");
        const cancel = dlg.querySelector("[data-close]");
        if (cancel) cancel.textContent = "Close";
        return; // keep the submit disabled: the alarm changed under us
      }
      if (e.status === 403) {
        this.ctx.who.ack = false;
        this.ctx.onRightsChanged();
        this.showError(dlg, "This key may not acknowledge or resolve alarms (403).");
        return;
      }
      this.showError(dlg, errorText(e));
      submit.disabled = false;
    }
  }

  showError(dlg, text, kind = "") {
    const err = dlg.querySelector(".error");
    err.textContent = text;
    err.className = kind === "conflict" ? "error notice-conflict" : "error";
    err.dataset.kind = kind;
    err.hidden = false;
  }
}

export function errorText(e) {
  if (!(e instanceof ApiError)) return String(e?.message || e);
  if (e.status === 0) return "The server cannot be reached. Check the connection and try again.";
  if (e.status === 404) return "Not found: the alarm does not exist or is outside this key's scope (404).";
  if (e.status === 422 || e.status === 400) return `Refused by the server: ${e.message} (${e.status}).`;
  return `${e.message} (${e.status})`;
}

/** The <li> items of an alarm's history (who, when, what), oldest first: transitions,
 * assignments, the call log (contact, what was said, outcome), feedback, e-mails. */
export function historyItems(alarm, now) {
  const history = Array.isArray(alarm.history) ? alarm.history : [];
  if (!history.length) return [h("li", { class: "muted" }, "No history recorded.")];
  return history.map((e) => {
    const res = e.resolution || null;
    const action = e.action || e.to || e.type || "change";
    const what =
      action === "assigned" || action === "assign"
        ? `Assigned to ${e.to ?? e.assigned_to ?? "–"}`
        : action === "note" || action === "noted" || action === "notes"
          ? `Call log · ${fmt.label(e.contact || "other")}`
          : action === "feedback"
            ? `Shipper feedback: ${e.verdict ?? "–"}`
            : fmt.label(action);
    const text = e.text ?? e.note ?? e.comment ?? null;
    return h(
      "li",
      { dataset: { action } },
      h("span", { class: "what" }, what),
      e.from && e.to && e.from !== e.to && !String(action).startsWith("assign") ? h("span", { class: "muted" }, `  ${e.from} → ${e.to}`) : null,
      h(
        "div",
        { class: "meta" },
        fmt.timeEl(e.at ?? e.ts, now),
        " · by ",
        e.by ?? "–",
        e.key_id ? h("span", { class: "muted", title: "API key id" }, ` (${e.key_id})`) : null,
        e.level !== undefined ? ` · level ${e.level}` : "",
      ),
      text ? h("div", { class: "note-text" }, text) : null,
      e.outcome ? h("div", { class: "small" }, `Outcome: ${e.outcome}`) : null,
      res
        ? h(
            "div",
            { class: "small" },
            `Cause: ${fmt.label(res.cause)}`,
            res.action ? h("div", {}, `Action: ${res.action}`) : null,
            res.feedback ? h("div", {}, `Customer feedback: ${res.feedback}`) : null,
          )
        : null,
    );
  });
}
