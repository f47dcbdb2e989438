// Where an alarm happened, in words: the nearest named place the desk knows (the trip's
// origin and stops, the geofences), so a text reads "near Smithfield DC" and not a pair of
// coordinates. Pure functions.

const R = 6371008.8;

export function metres(lat1, lon1, lat2, lon2) {
  const rad = Math.PI / 180;
  const dLat = (lat2 - lat1) * rad;
  const dLon = (lon2 - lon1) * rad;
  const a = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * R * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** [lat, lon] of a geometry: a Point, or the mean of a polygon's outer ring. */
function centre(geometry) {
  const g = geometry?.type === "Feature" ? geometry.geometry : geometry;
  if (!g) return null;
  if (g.type === "Point" && Array.isArray(g.coordinates)) return [g.coordinates[1], g.coordinates[0]];
  const ring = g.type === "Polygon" ? g.coordinates?.[0] : g.type === "MultiPolygon" ? g.coordinates?.[0]?.[0] : null;
  if (!Array.isArray(ring) || !ring.length) return null;
  const pts = ring.slice(0, -1).length ? ring.slice(0, -1) : ring;
  return [pts.reduce((s, p) => s + p[1], 0) / pts.length, pts.reduce((s, p) => s + p[0], 0) / pts.length];
}

/** Named places of a trip and the global fences: [{name, lat, lon}]. */
export function knownPlaces(trip, fences = []) {
  const out = [];
  const add = (name, geometry) => {
    const c = centre(geometry);
    if (name && c) out.push({ name, lat: c[0], lon: c[1] });
  };
  if (trip) {
    add(trip.origin?.name, trip.origin?.geometry);
    for (const s of trip.stops || []) add(s.name || s.stop_id, s.geometry);
  }
  for (const f of fences) add(f.properties?.name ?? f.name, f.geometry);
  return out;
}

/** "at Smithfield DC" (within 300 m), "2.4 km from Cairns depot" (within 50 km), else null. */
export function nearestPlaceText(lat, lon, places) {
  if (!Number.isFinite(lat) || !Number.isFinite(lon) || !places.length) return null;
  let best = null;
  for (const p of places) {
    const d = metres(lat, lon, p.lat, p.lon);
    if (!best || d < best.d) best = { ...p, d };
  }
  if (best.d <= 300) return `at ${best.name}`;
  if (best.d > 50000) return null;
  const dist = best.d < 1000 ? `${Math.round(best.d / 10) * 10} m` : `${(best.d / 1000).toFixed(1)} km`;
  return `${dist} from ${best.name}`;
}
