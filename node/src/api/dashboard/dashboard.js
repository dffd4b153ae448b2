// The dashboard: the /v1 API of the peer that served this page, polled every
// two seconds. Everything a peer or a user wrote (names, labels, reasons) is
// put in the page as text, never as markup.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("atoll-token");
let timer = null;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
  const payload = body === undefined || contentType ? body : JSON.stringify(body);
  const r = await fetch(path, { method, headers, body: payload });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) {
    if (r.status === 401) { loggedOut(); }
    throw new ApiError(r.status, message(json) || text || r.statusText);
  }
  return json;
}

// The message of an API error body: {"error": {"code", "message"}}.
function message(json) {
  return json && json.error && json.error.message;
}

// Builds an element; children are nodes or text.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function state(text, cls) {
  return el("span", { class: cls }, el("span", { class: "dot" }), text);
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function bytes(n) {
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1024 * 1024 * 1024) return (n / 1048576).toFixed(1) + " MiB";
  return (n / 1073741824).toFixed(2) + " GiB";
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  const cell = (c) => (c instanceof Node && (c.tagName === "TD" || c.tagName === "TH") ? c : el("td", {}, c));
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map(cell))));
}

function options(select, values) {
  const keep = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
  if (values.includes(keep)) select.value = keep;
}

// Two sources of errors: the last action (create, upload, stop...) and the
// last poll. A poll that succeeds clears only its own, so an action's
// refusal stays on screen until the next action.
const errors = { action: "", poll: "" };

function showError(e, source = "action") {
  errors[source] = e ? String(e.message || e) : "";
  $("error").textContent = [errors.action, errors.poll].filter(Boolean).join(" · ");
}

async function refresh() {
  try {
    const [sites, reach, list, images, projects, intents] = await Promise.all([
      api("GET", "/v1/sites"),
      api("GET", "/v1/sites/reachability"),
      api("GET", "/v1/instances"),
      api("GET", "/v1/images"),
      api("GET", "/v1/projects"),
      api("GET", "/v1/intents"),
    ]);
    renderSites(sites);
    renderReach(reach);
    renderInstances(list);
    renderImages(images);
    const names = projects.map((p) => p.name);
    options(document.querySelector("#create [name=project]"), names);
    options(document.querySelector("#upload [name=project]"), names);
    options(document.querySelector("#create [name=site]"), sites.map((s) => s.member.site));
    options(document.querySelector("#create [name=image]"), images.map((i) => i.project + "/" + i.name));
    renderIntents(intents);
    await renderQuotas(names);
    showError(null, "poll");
  } catch (e) {
    if (e.status !== 401) showError(e, "poll");
  }
}

function renderSites(sites) {
  fill("sites", sites.map((s) => {
    const m = s.member, v = s.summary, d = v && v.descriptor;
    return [
      m.site, m.region,
      el("td", { class: s.reachable ? "yes" : "no" }, state(s.reachable ? "yes" : "no")),
      ago(s.last_seen),
      v ? `${v.instances} (${v.running} running)` : "-",
      v ? `${v.allocated.cpus}/${d.capacity.cpus}` : "-",
      v ? `${v.allocated.memory_mib}/${d.capacity.memory_mib} MiB` : "-",
      d ? d.kinds.join(", ") : "-",
      d ? d.version : "-",
    ];
  }));
}

// Rows: observers; columns: the sites they may reach.
function renderReach(view) {
  const names = view.map((v) => v.site);
  $("reach").tHead.replaceChildren(el("tr", {}, el("th", {}, ""), ...names.map((n) => el("th", {}, n))));
  fill("reach", view.map((v) => [
    el("th", {}, v.site),
    ...names.map((n) => {
      if (n === v.site) return el("td", { class: "self" }, "—");
      if (!v.reaches) return el("td", { class: "unknown", title: "not known" }, "?");
      const sees = v.reaches.includes(n);
      return el("td", { class: sees ? "yes" : "no", title: `${v.site} ${sees ? "reaches" : "does not reach"} ${n}` },
        state(sees ? "yes" : "no"));
    }),
  ]));
}

function act(inst, what) {
  const path = `/v1/instances/${encodeURIComponent(inst.project)}/${encodeURIComponent(inst.name)}`;
  const site = "?site=" + encodeURIComponent(inst.site);
  const call = what === "delete" ? api("DELETE", path + site) : api("POST", `${path}/${what}${site}`);
  call.then(() => { showError(null); return refresh(); }, showError);
}

function renderInstances(list) {
  const stale = new Map(list.sites.filter((s) => !s.reachable).map((s) => [s.site, s.as_of]));
  fill("instances", list.instances.map((i) => {
    const known = stale.has(i.site) ? ` (as of ${ago(stale.get(i.site))})` : "";
    return [
      i.site, i.project, i.name,
      el("td", { class: i.observed }, state(i.observed + known)),
      i.image, i.cpus, i.memory_mib + " MiB",
      el("td", { class: "reason" }, i.reason),
      el("td", {},
        el("button", { onclick: () => act(i, "stop"), "data-act": "stop" }, "Stop"),
        el("button", { onclick: () => act(i, "start"), "data-act": "start" }, "Start"),
        el("button", { onclick: () => act(i, "delete"), "data-act": "delete" }, "Delete")),
    ];
  }));
}

function renderImages(images) {
  fill("images", images.map((i) => [
    i.project, i.name, i.format, bytes(i.size), i.visibility,
    i.holders.join(", ") || "nobody",
  ]));
}

function renderIntents(intents) {
  fill("intents", intents.slice(-50).reverse().map((i) => [
    i.intent, i.requester, i.target, i.user, i.summary,
    el("td", { class: i.state === "done" ? "running" : i.state === "pending" ? "pending" : "failed" }, state(i.state)),
    ago(i.created_at), el("td", { class: "reason" }, i.detail),
  ]));
}

async function renderQuotas(projects) {
  const views = await Promise.all(projects.map((p) => api("GET", `/v1/quotas/${encodeURIComponent(p)}`)));
  $("quotas").replaceChildren(...views.map((q) => {
    const t = q.total;
    const rows = q.by_site.map((r) => el("tr", {},
      el("td", {}, r.site),
      el("td", { class: r.reachable ? "yes" : "no" }, state(r.reachable ? "yes" : "no")),
      el("td", {}, r.free ? `${r.free.instances} inst, ${r.free.cpus} cpu, ${r.free.memory_mib} MiB` : "-"),
      el("td", {}, r.used ? `${r.used.instances} inst, ${r.used.cpus} cpu, ${r.used.memory_mib} MiB` : "-"),
      el("td", {}, r.source)));
    return el("div", { class: "quota" },
      el("h3", {}, `${q.project}: ${t.instances} instances, ${t.cpus} CPUs, ${t.memory_mib} MiB in all`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Site", "Reachable", "Free rights", "Used", "From"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  }));
}

async function create(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const body = {
    name: f.get("name"), project: f.get("project"), image: f.get("image"),
    cpus: Number(f.get("cpus")), memory_mib: Number(f.get("memory_mib")),
  };
  const site = "?site=" + encodeURIComponent(f.get("site"));
  try {
    await api("POST", "/v1/instances" + site, body);
    ev.target.reset();
    showError(null);
  } catch (e) { showError(e); }
  refresh();
}

function upload(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const file = f.get("file");
  const q = new URLSearchParams({ name: f.get("name"), project: f.get("project"), format: f.get("format") });
  // XMLHttpRequest, for upload progress.
  const xhr = new XMLHttpRequest();
  const bar = $("upload-progress");
  bar.hidden = false;
  xhr.upload.onprogress = (p) => { if (p.lengthComputable) bar.value = p.loaded / p.total; };
  xhr.onloadend = () => {
    bar.hidden = true;
    if (xhr.status === 200) { ev.target.reset(); showError(null); }
    else {
      let msg = xhr.responseText;
      try { msg = message(JSON.parse(msg)) || msg; } catch (_) { /* text */ }
      showError(new Error(`upload failed: ${msg || xhr.status}`));
    }
    refresh();
  };
  xhr.open("POST", "/v1/images?" + q);
  xhr.setRequestHeader("Authorization", "Bearer " + token);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.send(file);
}

function loggedOut() {
  token = null;
  sessionStorage.removeItem("atoll-token");
  clearInterval(timer);
  $("app").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
}

async function loggedIn() {
  const me = await api("GET", "/v1/whoami");
  $("who").textContent = `${me.user} on ${me.site}`;
  $("serving").textContent = me.site;
  for (const e of document.querySelectorAll(".serving")) e.textContent = me.site;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

async function login(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    const t = await api("POST", "/v1/login", { user: f.get("user"), password: f.get("password") });
    token = t.token;
    sessionStorage.setItem("atoll-token", token);
    $("login-error").textContent = "";
    await loggedIn();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("create").addEventListener("submit", create);
  $("upload").addEventListener("submit", upload);
  $("logout").addEventListener("click", () => api("POST", "/v1/logout").finally(loggedOut));
  if (token) loggedIn().catch(loggedOut); else loggedOut();
});
