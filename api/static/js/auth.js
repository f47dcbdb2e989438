// Sign-in and what a key may do. The key lives in sessionStorage: it is gone when the tab
// closes and is never shared with other tabs. The API enforces every right (403/404); the
// page only mirrors it so that a shipper or fleet key is not offered buttons it cannot use.

import { ApiError } from "./api.js";

const KEY = "cw.key";
const OPERATOR = "cw.operator";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  get operator() {
    return sessionStorage.getItem(OPERATOR) || "desk";
  },
  save(key, operator) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(OPERATOR, operator || "desk");
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

/** Rights by role (contract §7); null = not known, try and let the API answer. */
const RIGHTS = {
  admin: { ack: true, whatif: true, replay: true, allShippers: true },
  desk: { ack: true, whatif: false, replay: true, allShippers: true },
  fleet: { ack: false, whatif: true, replay: true, allShippers: true },
  shipper: { ack: false, whatif: false, replay: true, allShippers: false },
};

export function rightsFor(role) {
  return RIGHTS[role] || { ack: null, whatif: null, replay: null, allShippers: null };
}

/**
 * Check the key and find its role: GET /v1/keys/me when the API has it, else probe the
 * two actions with requests that cannot change anything (an alarm and a trip that do not
 * exist): 403 means no right, 404/409/422 means the right exists.
 */
export async function identify(api) {
  try {
    const me = await api.get("/v1/keys/me");
    const role = me?.role ?? me?.key?.role ?? null;
    if (role) {
      return { role, shipper: me.shipper ?? me?.key?.shipper ?? null, label: me.label ?? null, ...rightsFor(role) };
    }
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.status === 401 || e.status === 0) throw e;
    // 404/405: no such endpoint on this server; fall through to probing.
  }
  // An invalid key must fail here with 401, whatever the role.
  try {
    await api.get("/v1/trips?limit=1");
  } catch (e) {
    if (e.status === 401 || e.status === 0) throw e;
  }
  const probe = async (path, body) => {
    try {
      await api.post(path, body);
      return true;
    } catch (e) {
      if (e.status === 401 || e.status === 0) throw e;
      return e.status !== 403;
    }
  };
  const ack = await probe("/v1/alarms/__rights_probe__/ack", { by: "rights-probe", note: null });
  const whatif = await probe("/v1/replay", { trip_ids: ["__rights_probe__"] });
  // The two rights tell the role apart (contract §7): admin both, desk ack, fleet replay,
  // shipper neither. The shipper's name is not needed: the API filters every answer.
  const role = ack && whatif ? "admin" : ack ? "desk" : whatif ? "fleet" : "shipper";
  return { role, shipper: null, label: null, inferred: true, ...rightsFor(role), ack, whatif };
}
