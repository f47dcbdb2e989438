// Leaflet helpers shared by the live and replay maps: base map (OpenStreetMap's tiles by
// default, with their attribution), a graticule so a map without tiles still reads, and the vector layers of a trip (route with
// its corridor at true width, origin, stops) and of fences.

import { esc, label } from "./format.js";

const L = window.L;

export const FENCE_COLOURS = {
  depot: "#495057",
  consignee: "#2b8a3e",
  rest_area: "#1c7ed6",
  risk_zone: "#c92a2a",
  custom: "#7048e8",
};

const OSM_ATTRIBUTION = '© <a href="https://www.openstreetmap.org/copyright" target="_blank" rel="noopener">OpenStreetMap</a> contributors';

/** OpenStreetMap's own tile servers (their usage policy asks for the attribution). */
export function isOsm(template) {
  try {
    const host = new URL(template.replace(/\{[^}]*\}/g, "0")).hostname;
    return host === "openstreetmap.org" || host.endsWith(".openstreetmap.org");
  } catch {
    return false;
  }
}

/**
 * A map in `el`. With config.tiles (an XYZ URL template) the tiles are drawn over the grid;
 * when they cannot be loaded the grid stays and one line says so: the map stays usable.
 */
export function createMap(el, config) {
  const tiles = config?.tiles || null;
  const map = L.map(el, { zoomControl: true, attributionControl: Boolean(tiles), worldCopyJump: true });
  el.classList.add("no-tiles");
  const grid = graticule().addTo(map);
  if (tiles) {
    const attribution = config.attribution || (isOsm(tiles) ? OSM_ATTRIBUTION : "");
    const layer = L.tileLayer(tiles, { maxZoom: 19, attribution, crossOrigin: false });
    let loaded = 0;
    let failed = 0;
    layer.on("tileload", () => {
      loaded += 1;
      if (loaded === 1) grid.remove(); // the grid would be drawn over the tiles
      el.classList.remove("no-tiles");
      el.dataset.tiles = "loaded";
      tileNotice(el, null);
    });
    layer.on("tileerror", () => {
      failed += 1;
      if (!loaded && failed >= 2) {
        el.dataset.tiles = "failed";
        tileNotice(el, "The base map cannot be reached: showing a plain grid.");
      }
    });
    layer.addTo(map);
    if (map.attributionControl) map.attributionControl.setPrefix(false);
  }
  L.control.scale({ imperial: false, position: "bottomleft" }).addTo(map);
  map.setView([0, 0], 2);
  return map;
}

function tileNotice(el, text) {
  let n = el.querySelector(".tile-notice");
  if (!text) {
    n?.remove();
    return;
  }
  if (!n) {
    n = document.createElement("div");
    n.className = "tile-notice";
    n.setAttribute("role", "status");
    el.append(n);
  }
  n.textContent = text;
}

/** Latitude/longitude lines with a spacing that suits the zoom: orientation without tiles. */
function graticule() {
  const group = L.layerGroup();
  const steps = [20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005];
  function draw(map) {
    group.clearLayers();
    const view = map.getBounds();
    const b = view.pad(0.5); // lines reach past the edges, so a pan does not show their ends
    const span = Math.max(view.getEast() - view.getWest(), view.getNorth() - view.getSouth());
    const step = steps.find((s) => span / s >= 4) ?? steps[steps.length - 1];
    const style = { color: "#ded8c9", weight: 1, interactive: false };
    for (let lat = Math.ceil(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) {
      group.addLayer(L.polyline([[lat, b.getWest()], [lat, b.getEast()]], style));
    }
    for (let lon = Math.ceil(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
      group.addLayer(L.polyline([[b.getSouth(), lon], [b.getNorth(), lon]], style));
    }
  }
  group.onAdd = function (map) {
    L.LayerGroup.prototype.onAdd.call(this, map);
    this._redraw = () => draw(map);
    map.on("moveend zoomend resize", this._redraw);
    map.whenReady(this._redraw);
  };
  group.onRemove = function (map) {
    map.off("moveend zoomend resize", this._redraw);
    L.LayerGroup.prototype.onRemove.call(this, map);
  };
  return group;
}

/** GeoJSON geometry of a route (a LineString, a Feature of one, or bare coordinates). */
export function routeCoords(route) {
  if (!route) return [];
  const geom = route.type === "Feature" ? route.geometry : route;
  const coords = Array.isArray(geom) ? geom : geom?.coordinates;
  if (!Array.isArray(coords)) return [];
  const flat = geom?.type === "MultiLineString" ? coords.flat() : coords;
  return flat.filter((c) => Array.isArray(c) && c.length >= 2).map(([lon, lat]) => [lat, lon]);
}

const metresPerPixel = (lat, zoom) => (156543.03392 * Math.cos((lat * Math.PI) / 180)) / 2 ** zoom;

/**
 * The route as a line inside its corridor; the corridor is a wide translucent line whose
 * width is recomputed on zoom so that it covers corridor_m on both sides.
 */
export const ROUTE_COLOUR = "#6f7d8c";
export const ROUTE_SELECTED = "#1f6feb";

export function routeLayer(map, trip, { colour = ROUTE_COLOUR, corridorM = null } = {}) {
  const latlngs = routeCoords(trip.route);
  const group = L.layerGroup();
  if (latlngs.length < 2) return group;
  const corridor_m = Number(corridorM ?? trip.corridor_m ?? trip.rules?.corridor_m ?? 500);
  const midLat = latlngs[Math.floor(latlngs.length / 2)][0];
  const band = L.polyline(latlngs, {
    color: colour,
    opacity: 0.09,
    lineCap: "round",
    lineJoin: "round",
    interactive: false,
  });
  const line = L.polyline(latlngs, { color: colour, weight: 2, opacity: 0.75, dashArray: "6 5", interactive: false });
  const resize = () => band.setStyle({ weight: Math.max(3, (2 * corridor_m) / metresPerPixel(midLat, map.getZoom())) });
  group.addLayer(band).addLayer(line);
  group.on("add", () => {
    resize();
    map.on("zoomend", resize);
  });
  group.on("remove", () => map.off("zoomend", resize));
  group.bounds = line.getBounds();
  /** Emphasise (selected trip) or tone down the route. */
  group.setColour = (c) => {
    band.setStyle({ color: c, opacity: c === colour ? 0.09 : 0.16 });
    line.setStyle({ color: c, opacity: c === colour ? 0.75 : 1, weight: c === colour ? 2 : 3 });
    if (c !== colour) line.bringToFront();
  };
  return group;
}

/** A fence area: a Point with a radius is a circle, a Polygon is drawn as is. */
export function areaLayer(geometry, radiusM, style, tooltip) {
  if (!geometry) return null;
  const geom = geometry.type === "Feature" ? geometry.geometry : geometry;
  let layer = null;
  if (geom?.type === "Point" && Array.isArray(geom.coordinates)) {
    const [lon, lat] = geom.coordinates;
    layer = L.circle([lat, lon], { radius: Number(radiusM) || 200, ...style });
  } else if (geom?.type === "Polygon" || geom?.type === "MultiPolygon") {
    layer = L.geoJSON(geom, { style: () => style });
  }
  if (layer && tooltip) layer.bindTooltip(tooltip, { sticky: true });
  return layer;
}

/** Origin and stops of a trip, labelled. */
export function tripPlacesLayer(trip) {
  const group = L.layerGroup();
  const origin = trip.origin;
  if (origin?.geometry) {
    const l = areaLayer(
      origin.geometry,
      origin.radius_m,
      { color: "#495057", weight: 2, fillOpacity: 0.12 },
      `<b>Origin</b> ${esc(origin.name || "")}`,
    );
    if (l) group.addLayer(l);
  }
  (trip.stops || []).forEach((stop, i) => {
    const l = areaLayer(
      stop.geometry,
      stop.radius_m,
      { color: stop.unlock_allowed === false ? "#7048e8" : "#2b8a3e", weight: 2, fillOpacity: 0.14 },
      `<b>Stop ${i + 1}: ${esc(stop.name || stop.stop_id || "")}</b>` +
        (stop.unlock_allowed === false ? "<br>unlock not allowed" : "<br>unlock allowed"),
    );
    if (l) group.addLayer(l);
  });
  return group;
}

/** Geofences from GET /v1/geofences (stored documents or GeoJSON Features). */
export function fenceLayer(fences) {
  const group = L.layerGroup();
  for (const f of fences) {
    const props = f.properties || {};
    const kind = props.kind || f.kind || "custom";
    const colour = FENCE_COLOURS[kind] || FENCE_COLOURS.custom;
    const l = areaLayer(
      f.geometry,
      props.radius_m ?? f.radius_m,
      {
        color: colour,
        weight: 1.5,
        dashArray: kind === "risk_zone" ? "4 4" : null,
        fillOpacity: kind === "risk_zone" ? 0.12 : 0.06,
        className: `fence fence-${String(kind).replace(/[^a-z_]/g, "")}`,
      },
      `<b>${esc(props.name || f.name || f.geofence_id || "fence")}</b><br>${esc(label(kind))}`,
    );
    if (l) group.addLayer(l);
  }
  return group;
}

/** A round truck marker in the colour of its state; keyboard-focusable (Leaflet markers are). */
export function truckIcon(state, { selected = false, text = "", badge = 0 } = {}) {
  const b = badge ? `<span class="truck-badge" title="${badge} open alarm(s)">${badge}</span>` : "";
  return L.divIcon({
    className: "",
    html: `<div class="truck-icon state-${esc(state)}${selected ? " selected" : ""}" data-state="${esc(state)}">${esc(text)}${b}</div>`,
    iconSize: [22, 22],
    iconAnchor: [11, 11],
  });
}

/** A square pin with an emoji-free glyph for replay/what-if markers. */
export function pinIcon(kind, glyph, extraClass = "") {
  return L.divIcon({
    className: `map-pin pin-${kind} ${extraClass}`,
    html: `<span>${esc(glyph)}</span>`,
    iconSize: [22, 22],
    iconAnchor: [11, 11],
  });
}
