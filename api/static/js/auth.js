// Sign-in and what a key may do. The key lives in sessionStorage: it is gone when the tab
// closes and is never shared with other tabs. The API enforces every right (403/404); the
// page only mirrors it so that a shipper or fleet key is not offered buttons it cannot use.

import { ApiError } from "./api.js";

const KEY = "cw.key";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  save(key) {
    sessionStorage.setItem(KEY, key);
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
 * Check the key and find out who it is: GET /v1/keys/me -> {key_id, name, role, shipper}.
 * The key's name is the operator recorded in every history entry (contract §5). A server
 * without that route still checks the key (401) and the page then finds rights by trying.
 */
export async function identify(api) {
  try {
    const me = await api.get("/v1/keys/me");
    const role = me?.role ?? null;
    if (role) {
      return { role, shipper: me.shipper ?? null, name: me.name ?? null, keyId: me.key_id ?? null, ...rightsFor(role) };
    }
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.status === 401 || e.status === 0) throw e;
    if (e.status !== 404 && e.status !== 405) throw e;
  }
  // An old server: an invalid key must still fail here with 401.
  await api.get("/v1/trips?limit=1").catch((e) => {
    if (e.status === 401 || e.status === 0) throw e;
  });
  return { role: null, shipper: null, name: null, keyId: null, inferred: true, ...rightsFor(null) };
}
