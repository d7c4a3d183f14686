// fabguard review page: shows the next queued inspection, posts the inspector's label, moves on.
// Plain browser JavaScript, no build step; everything it loads comes from this service.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { items: [], current: null, skipped: new Set(), busy: false, urls: [], types: [] };

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

function headers(json = false) {
  const h = {};
  const token = sessionStorage.getItem("fabguard-token");
  if (token) h.Authorization = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function detail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return response.statusText;
  }
}

async function blobUrl(url) {
  // fetched with the token (token_on_inspect), shown as a blob: URL
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) return null;
  const made = URL.createObjectURL(await response.blob());
  state.urls.push(made);
  return made;
}

async function showImage(img, url, missing) {
  img.removeAttribute("src");
  img.alt = "loading";
  const made = url && (await blobUrl(url));
  if (made) {
    img.src = made;
    img.alt = missing[0];
  } else {
    img.alt = missing[1];
  }
}

function setTypes(types) {
  if (types.join("\n") === state.types.join("\n")) return;
  state.types = types;
  const select = $("defect-type");
  select.length = 1;
  types.forEach((t, i) => select.add(new Option(i < 9 ? `${i + 1}: ${t}` : t, t)));
}

async function load() {
  const inspector = sessionStorage.getItem("fabguard-inspector");
  if (!inspector) return;
  const query = new URLSearchParams({ inspector, limit: "20" });
  const response = await fetch("/api/v1/review/queue?" + query, { headers: headers() });
  if (!response.ok) {
    say(`Cannot read the queue: ${await detail(response)}`, true);
    return;
  }
  const body = await response.json();
  $("waiting").textContent = `${body.waiting} waiting`;
  setTypes(body.defect_types);
  state.items = body.items.filter((item) => !state.skipped.has(item.inspection_id));
  if (!state.items.length && state.skipped.size) {  // only skipped ones left: offer them again
    state.skipped.clear();
    state.items = body.items;
  }
  next();
}

function next() {
  state.urls.forEach((u) => URL.revokeObjectURL(u));
  state.urls = [];
  state.current = state.items.shift() || null;
  const item = state.current;
  $("item").hidden = !item;
  $("empty").hidden = !!item;
  document.body.dataset.inspection = item ? item.inspection_id : "";
  if (!item) return;
  $("inspection-id").textContent = item.inspection_id;
  $("wafer").textContent = `${item.wafer_id} / ${item.inspection_point}`;
  $("reason").textContent = item.reason === "review"
    ? "REVIEW decision" : `audit sample of the ${item.decision} decisions`;
  $("decision").textContent = `${item.decision} (confidence ${item.confidence.toFixed(2)})`;
  $("score").textContent = item.anomaly_score.toPrecision(4);
  $("version").textContent = item.model_version;
  $("labels").textContent = `${item.labels} of ${item.labels_wanted}` +
    (item.labels_wanted > 1 ? " (a second inspector's label measures agreement)" : "");
  $("defect-type").value = "";
  showImage($("image"), item.image_url, ["inspected image", "image not stored"]);
  showImage($("heatmap"), item.heatmap_url, ["heatmap overlay", "heatmap not rendered yet"]);
}

async function answer(label) {
  const item = state.current;
  if (!item || state.busy) return;
  state.busy = true;
  const type = $("defect-type").value;
  const body = { inspector: sessionStorage.getItem("fabguard-inspector"), label };
  if (label === "defective" && type) body.defect_type = type;
  try {
    const response = await fetch(`/api/v1/review/items/${item.inspection_id}/labels`,
      { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (response.status === 201) {
      say(`${item.wafer_id} / ${item.inspection_point}: ${label}` + (body.defect_type ? ` (${body.defect_type})` : ""));
    } else if (response.status === 409) {
      say(`${item.wafer_id} / ${item.inspection_point}: ${await detail(response)}; moved on`, true);
    } else {
      say(`Label not saved: ${await detail(response)}`, true);
      return;  // stay on this image (e.g. a wrong token)
    }
    if (state.items.length) next(); else await load();
  } catch (e) {
    say(`Label not saved: ${e}`, true);
  } finally {
    state.busy = false;
  }
}

function skip() {
  if (!state.current) return;
  state.skipped.add(state.current.inspection_id);
  if (state.items.length) next(); else load();
}

function onKey(event) {
  const tag = document.activeElement && document.activeElement.tagName;
  if (tag === "INPUT" || tag === "TEXTAREA" || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "n") answer("normal");
  else if (key === "d") answer("defective");
  else if (key === "s") skip();
  else if (/^[0-9]$/.test(key)) {
    const select = $("defect-type");
    const index = Number(key);
    if (index < select.length) select.selectedIndex = index;
  } else return;
  event.preventDefault();
}

function start(event) {
  event.preventDefault();
  const inspector = $("inspector").value.trim();
  if (!$("inspector").checkValidity() || !inspector) {
    say("Inspector: letters, digits, space, '.', '_' or '-' (up to 64)", true);
    return;
  }
  sessionStorage.setItem("fabguard-inspector", inspector);
  sessionStorage.setItem("fabguard-token", $("token").value);
  document.activeElement.blur();
  say(`Reviewing as ${inspector}`);
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("inspector").value = sessionStorage.getItem("fabguard-inspector") || "";
  $("token").value = sessionStorage.getItem("fabguard-token") || "";
  $("who").addEventListener("submit", start);
  $("normal").addEventListener("click", () => answer("normal"));
  $("defective").addEventListener("click", () => answer("defective"));
  $("skip").addEventListener("click", skip);
  document.addEventListener("keydown", onKey);
  setInterval(() => { if (!state.current) load(); }, 30000);
  load();
});
