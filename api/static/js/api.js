// The HTTP API client: Bearer key on every call, contract errors turned into ApiError,
// list answers accepted in any of the shapes the API may use.

export class ApiError extends Error {
  /** status 0 means the server could not be reached. */
  constructor(status, code, message, body = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/** `?a=1&b=x`, skipping empty values; arrays repeat the key. */
export function query(params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A list from a bare array or an object wrapping one ({items}, {alarms}, {features}…). */
export function asList(data, ...keys) {
  if (Array.isArray(data)) return data;
  if (data && typeof data === "object") {
    for (const k of [...keys, "items", "alarms", "trips", "geofences", "devices", "data", "results", "features"]) {
      if (Array.isArray(data[k])) return data[k];
    }
  }
  return [];
}

export function createApi({ getKey, onUnauthorized = () => {} }) {
  async function request(method, path, body, { signal, auth = true } = {}) {
    const headers = { Accept: "application/json" };
    const key = getKey();
    if (auth && key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "The server cannot be reached.");
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!res.ok) {
      const err = (data && typeof data === "object" && data.error) || {};
      const detail = data && typeof data === "object" && typeof data.detail === "string" ? data.detail : null;
      const e = new ApiError(
        res.status,
        err.code || String(res.status),
        err.message || detail || res.statusText || `HTTP ${res.status}`,
        data,
      );
      if (res.status === 401 && auth) onUnauthorized(e);
      throw e;
    }
    return data;
  }
  /** A CSV answer (Accept: text/csv) saved as a file: fetched with the key, never a link. */
  async function download(path, filename) {
    const headers = { Accept: "text/csv" };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(path, { headers, cache: "no-store" });
    } catch {
      throw new ApiError(0, "network", "The server cannot be reached.");
    }
    if (!res.ok) {
      let err = {};
      try {
        err = (await res.json())?.error || {};
      } catch {
        /* not JSON */
      }
      throw new ApiError(res.status, err.code || String(res.status), err.message || `HTTP ${res.status}`);
    }
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    return blob;
  }
  return {
    request,
    download,
    put: (path, body = {}, opts) => request("PUT", path, body, opts),
    get: (path, opts) => request("GET", path, undefined, opts),
    post: (path, body = {}, opts) => request("POST", path, body, opts),
  };
}
