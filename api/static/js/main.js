// The desk page: sign-in, the three views (live map, alarm queue, replay), the live feed,
// the server clock, keyboard shortcuts and toasts. Plain ES modules, no build step.

import { AlarmActions } from "./actions.js";
import { ApiError, createApi } from "./api.js";
import { identify, session } from "./auth.js";
import { ServerClock } from "./clock.js";
import * as fmt from "./format.js";
import { LiveView, lockFromEvent } from "./live.js";
import { QueueView } from "./queue.js";
import { ReplayView } from "./replay.js";
import { ReportsView } from "./reports.js";
import { CriticalSignal } from "./signal.js";
import { LiveFeed } from "./sse.js";
import { DeskState } from "./state.js";

const { fill } = fmt;
const $ = (id) => document.getElementById(id);
const VIEWS = ["live", "queue", "replay", "reports"];
const ALARM_EVENTS = new Set(["alarm.raised", "alarm.acknowledged", "alarm.resolved", "alarm.escalated", "alarm.episode_ended"]);

const clock = new ServerClock();
const api = createApi({
  getKey: () => session.key,
  // Only a key that stops working mid-shift signs the page out; a bad key at sign-in is
  // reported on the sign-in form.
  onUnauthorized: () => desk && signOut("Your API key was refused (401). Sign in again."),
});
let desk = null; // everything that exists once signed in; exposed for tests as window.cwDesk

function toast(text, kind = "") {
  const el = fmt.h("div", { class: `toast ${kind}` }, text);
  $("toasts").append(el);
  setTimeout(() => el.remove(), kind === "err" ? 9000 : 5000);
}

async function loadConfig() {
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    if (res.ok) return await res.json();
  } catch {
    /* no config: no tiles */
  }
  return { tiles: null };
}

// The server time read with config.json is applied once, at boot: applied again later it
// would pull the clock back by however long the page has been open.
let configApplied = false;
async function syncClock(config) {
  if (!configApplied && config && (config.now || config.clock_speed)) {
    configApplied = true;
    clock.observe(fmt.toMs(config.now) ?? clock.now(), { speed: Number(config.clock_speed) || null });
  }
  try {
    const t0 = performance.now();
    const res = await fetch("/healthz", { cache: "no-store" });
    const body = await res.json();
    const now = fmt.toMs(body?.now);
    if (now !== null) clock.observe(now, { rttMs: performance.now() - t0, speed: Number(config?.clock_speed) || null });
  } catch {
    /* keep the local clock */
  }
}

// -- sign in / out --------------------------------------------------------------------------
function showSignin(message = "") {
  $("view-signin").hidden = false;
  document.querySelector(".tabs").hidden = true;
  document.querySelector(".status").hidden = true;
  for (const v of VIEWS) $(`view-${v}`).hidden = true;
  const err = $("signin-error");
  err.hidden = !message;
  err.textContent = message;
  $("signin-key").focus();
}

function signOut(message) {
  session.clear();
  desk?.feed.stop();
  if (message) sessionStorage.setItem("cw.signout", message);
  location.hash = "";
  location.reload();
}

async function onSignin(e, config) {
  const key = $("signin-key").value.trim();
  const btn = e.target.querySelector("button[type=submit]");
  btn.disabled = true;
  session.save(key);
  signal.unlockAudio();
  try {
    const who = await identify(api);
    $("signin-key").value = "";
    await enterDesk(who, config);
  } catch (err) {
    session.clear();
    const msg =
      err instanceof ApiError && err.status === 401
        ? "This API key is not valid (401)."
        : err instanceof ApiError && err.status === 0
          ? "The server cannot be reached."
          : `Sign-in failed: ${err.message}`;
    showSignin(msg);
  } finally {
    btn.disabled = false;
  }
}

// -- the desk -------------------------------------------------------------------------------
const signal = new CriticalSignal({
  onOpen: (id) => setHash(`queue/${encodeURIComponent(id)}`),
  describe: (a) => {
    const trip = desk?.state.trips.get(a.trip_id);
    return `${fmt.label(a.type)} · trip ${a.trip_id}${trip?.vehicle ? ` · ${trip.vehicle}` : ""} · ${fmt.localText(fmt.toMs(a.ts) ?? clock.now(), clock.now())}`;
  },
});

function setHash(path) {
  const next = `#/${path}`;
  if (location.hash === next) route();
  else location.hash = next;
}

async function enterDesk(who, config) {
  const state = new DeskState(api, who);
  const ctx = {
    api,
    clock,
    config,
    who,
    state,
    toast,
    setHash,
    operator: () => who.name || who.role || "desk",
    showAlarm: (id) => setHash(`queue/${encodeURIComponent(id)}`),
    showOnMap: (tripId) => {
      setHash("live");
      setTimeout(() => desk.live.focusTrip(tripId), 50);
    },
    replayTrip: (tripId, atMs) => setHash(`replay/${encodeURIComponent(tripId)}${atMs ? `@${atMs}` : ""}`),
    onRightsChanged: () => desk.queue.render(),
    afterDialog: () => desk.queue.restoreFocus(),
  };
  ctx.actions = new AlarmActions(ctx);
  const live = new LiveView(ctx);
  const queue = new QueueView(ctx);
  const replay = new ReplayView(ctx);
  const reports = new ReportsView(ctx);
  const feed = new LiveFeed({
    url: "/v1/live",
    getKey: () => session.key,
    onEvent: (type, env) => onLiveEvent(type, env),
    onStatus: (st, info) => onFeedStatus(st, info),
  });
  desk = { who, state, ctx, live, queue, replay, reports, feed, signal };
  window.cwDesk = desk;
  state.addEventListener("alarms", () => signal.sync(state.alarms));

  $("view-signin").hidden = true;
  document.querySelector(".tabs").hidden = false;
  document.querySelector(".status").hidden = false;
  $("tab-replay").hidden = who.replay === false;
  $("tab-reports").hidden = who.role === "fleet";
  const role = who.role ? `${who.role}${who.shipper ? ` · ${who.shipper}` : ""}` : "key";
  fill($("who"), fmt.h("b", {}, who.name || "—"), ` · ${role}`);
  $("who").title = who.role ? `Signed in with a ${who.role} key` : "Role not reported by the server; rights are found by trying.";
  $("clock-zone").textContent = fmt.zoneName();

  feed.start();
  await Promise.all([
    state.loadAlarms().catch((e) => loadFailed("alarms", e)),
    state.loadTrips().catch((e) => loadFailed("trips", e)),
    state.loadFences().catch((e) => loadFailed("geofences", e)),
  ]);
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    const first = who.role === "shipper" ? "live" : who.role === "fleet" ? "replay" : "queue";
    history.replaceState(null, "", `#/${first}`);
  }
  route();
  document.body.dataset.ready = "1";
}

function loadFailed(what, e) {
  if (e instanceof ApiError && e.status === 403) return; // this key may not read these
  toast(`Could not load ${what}: ${e.message}`, "err");
}

function onFeedStatus(st, info = {}) {
  const el = $("feed-status");
  const text = {
    connecting: "connecting…",
    live: "live",
    reconnecting: info.delay ? `reconnecting in ${Math.ceil(info.delay / 1000)} s` : "reconnecting…",
    denied: `feed refused (${info.status})`,
    stopped: "stopped",
  }[st];
  el.textContent = text;
  el.className = `feed feed--${st}`;
  el.dataset.state = st;
  // After a gap, what happened meanwhile is fetched again: the feed does not replay it.
  if (st === "live" && info.reconnected && desk) {
    desk.state.loadAlarms().catch(() => {});
    desk.state.loadTrips().catch(() => {});
  }
}

let tripReload = null;
function onLiveEvent(type, env) {
  if (!desk) return;
  const { state, who } = desk;
  const d = env.data || {};
  const shipper = env.shipper ?? d.shipper ?? null;
  if (who.shipper && shipper && shipper !== who.shipper) return;
  if (type === "overflow") {
    // This reader fell behind and the server dropped events: read the queue again.
    state.loadAlarms().catch(() => {});
    return;
  }
  if (type === "position") {
    state.applyPosition({ ...d, shipper: d.shipper ?? shipper });
  } else if (ALARM_EVENTS.has(type)) {
    const doc = d.alarm ?? d;
    if (type === "alarm.raised" && !doc.status) doc.status = "open";
    const a = state.upsertAlarm(doc);
    if (!a) return;
    if (type === "alarm.raised" && a.severity === "critical" && a.status === "open") signal.raise(a);
    if (type === "alarm.escalated") toast(`Escalated (level ${a.escalation_level}): ${fmt.label(a.type)} · trip ${a.trip_id}`, "warn");
    if (type === "alarm.raised" && a.type === "LOCK_TAMPER") state.applyLock(a.trip_id, "tampered", fmt.toMs(a.ts));
    if (type === "alarm.raised" && a.type === "UNAUTHORIZED_UNLOCK") state.applyLock(a.trip_id, "unlocked", fmt.toMs(a.ts));
  } else if (type === "trip.milestone") {
    const kind = d.kind ?? d.milestone;
    if (kind === "sealed" || kind === "unsealed") state.applyLock(d.trip_id, lockFromEvent(kind), fmt.toMs(d.ts));
  } else if (type === "trip.status") {
    const status = d.status;
    if (status === "completed" || status === "cancelled") {
      state.trips.delete(d.trip_id);
      state.trucks.delete(d.trip_id);
      state.emit("trips", {});
      state.emit("trucks", {});
    } else if (status === "active" && !state.trips.has(d.trip_id)) {
      clearTimeout(tripReload);
      tripReload = setTimeout(() => state.loadTrips().catch(() => {}), 500);
    }
  }
}

// -- views ----------------------------------------------------------------------------------
function route() {
  if (!desk) return;
  const raw = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [view, ...rest] = raw.split("/");
  const arg = rest.join("/");
  const name = VIEWS.includes(view) ? view : "queue";
  showView(name);
  if (name === "queue" && arg) desk.queue.show(arg);
  if (name === "replay" && arg) {
    const [tripId, at] = arg.split("@");
    desk.replay.load(tripId, at ? Number(at) : null);
  }
}

function showView(name) {
  for (const v of VIEWS) {
    const on = v === name;
    $(`view-${v}`).hidden = !on;
    const tab = $(`tab-${v}`);
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
  }
  document.body.dataset.view = name;
  if (name === "live") desk.live.activate();
  if (name === "queue") desk.queue.render();
  if (name === "replay") desk.replay.activate();
  if (name === "reports") desk.reports.activate();
}

// -- keyboard -------------------------------------------------------------------------------
function typing(el) {
  return el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
}

function onKey(e) {
  if (!desk || e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
  if (document.querySelector("dialog[open]")) return; // dialogs handle their own keys (Esc)
  const t = e.target;
  const view = document.body.dataset.view;
  // Tabs: arrow keys move between them (ARIA tab pattern).
  if (t?.getAttribute?.("role") === "tab" && (e.key === "ArrowLeft" || e.key === "ArrowRight")) {
    const i = VIEWS.indexOf(t.dataset.view);
    const next = VIEWS[(i + (e.key === "ArrowRight" ? 1 : VIEWS.length - 1)) % VIEWS.length];
    setHash(next);
    $(`tab-${next}`).focus();
    e.preventDefault();
    return;
  }
  if (typing(t)) return;
  const key = e.key;
  const handled = () => e.preventDefault();
  if (key === "?") return handled(), $("dlg-help").showModal();
  if (["1", "2", "3", "4"].includes(key)) return handled(), setHash(VIEWS[Number(key) - 1]);
  if (key === "m") return handled(), toggleMute();
  if (view === "queue") {
    const inTable = t?.closest?.("#queue-table");
    if (key === "j" || (key === "ArrowDown" && inTable)) return handled(), desk.queue.move(1);
    if (key === "k" || (key === "ArrowUp" && inTable)) return handled(), desk.queue.move(-1);
    if (key === "a") return handled(), desk.queue.act("ack");
    if (key === "r") return handled(), desk.queue.act("resolve");
    if (key === "h") return handled(), desk.queue.act("history");
    if (key === "g") return handled(), desk.queue.act("map");
    if (key === "f") return handled(), $("f-status").focus();
  }
  if (view === "replay") {
    const onControl = t && ["BUTTON", "A"].includes(t.tagName);
    if (key === " " && !onControl) return handled(), desk.replay.toggle();
    if (key === "ArrowLeft" && !onControl) return handled(), desk.replay.step(e.shiftKey ? -600000 : -60000);
    if (key === "ArrowRight" && !onControl) return handled(), desk.replay.step(e.shiftKey ? 600000 : 60000);
    if (key === "[") return handled(), desk.replay.changeSpeed(-1);
    if (key === "]") return handled(), desk.replay.changeSpeed(1);
    if (key === ",") return handled(), desk.replay.stepEvent(-1);
    if (key === ".") return handled(), desk.replay.stepEvent(1);
  }
}

function toggleMute() {
  signal.setMuted(!signal.muted);
  renderMute();
  toast(signal.muted ? "Alarm sound off" : "Alarm sound on");
}

function renderMute() {
  const b = $("btn-mute");
  b.setAttribute("aria-pressed", String(signal.muted));
  b.firstChild.textContent = "♪";
  b.querySelector(".sr").textContent = signal.muted ? "Sound off" : "Sound on";
}

// -- boot -----------------------------------------------------------------------------------
async function boot() {
  // The sign-in handler is attached before anything is awaited, then the button enabled.
  const configReady = loadConfig();
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    onSignin(e, await configReady);
  });
  $("signin-form").querySelector("button[type=submit]").disabled = false;
  const config = await configReady;
  syncClock(config);
  setInterval(() => syncClock(config), 30000);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  // A page reopened with a key in the tab had no sign-in click: the first touch of the page
  // is the gesture browsers want before they let it make a sound.
  for (const kind of ["pointerdown", "keydown"]) {
    document.addEventListener(kind, () => signal.unlockAudio(), { once: true, capture: true });
  }
  $("btn-signout").addEventListener("click", () => signOut());
  $("btn-mute").addEventListener("click", toggleMute);
  $("btn-help").addEventListener("click", () => $("dlg-help").showModal());
  document.querySelectorAll(".tabs [role=tab]").forEach((b) => b.addEventListener("click", () => setHash(b.dataset.view)));
  renderMute();
  const everySecond = () => {
    $("clock-now").textContent = fmt.localText(clock.now(), clock.now());
    $("clock-now").title = fmt.utcText(clock.now());
    if (!desk) return;
    if (document.body.dataset.view === "queue") desk.queue.tick();
  };
  everySecond();
  setInterval(everySecond, 1000);
  setInterval(() => {
    if (desk && document.body.dataset.view === "live") desk.live.render();
  }, 2000);
  // Safety net for a 24-hour page: reread the queue now and then even if the feed is quiet.
  setInterval(() => desk?.state.loadAlarms().catch(() => {}), 60000);

  const farewell = sessionStorage.getItem("cw.signout");
  sessionStorage.removeItem("cw.signout");
  if (!session.key) {
    showSignin(farewell || "");
    return;
  }
  try {
    const who = await identify(api);
    signal.unlockAudio();
    await enterDesk(who, config);
  } catch (e) {
    session.clear();
    showSignin(e instanceof ApiError && e.status === 401 ? "Your API key was refused (401). Sign in again." : `Sign-in failed: ${e.message}`);
  }
}

boot();
