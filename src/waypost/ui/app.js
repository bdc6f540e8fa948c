// The Waypost dashboard: plain ES module, no build step. Every view reads the public
// HTTP API; one EventSource on /api/v1/events refreshes the open view as changes land.
import { api, ApiError, h, ago, badge, tags, statusOf, debounce } from "./lib.js";

const view = document.getElementById("view");
const live = document.getElementById("live");
const toast = document.getElementById("toast");
const TOKEN_KEY = "waypost-token";

// --- small pieces ------------------------------------------------------------------

function say(text, isError = false) {
  toast.textContent = text;
  toast.className = isError ? "error" : "";
  toast.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { toast.hidden = true; }, isError ? 6000 : 3000);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function askToken() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  input.value = token();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "ok") {
        if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
        else sessionStorage.removeItem(TOKEN_KEY);
      }
      resolve(dialog.returnValue === "ok");
    }, { once: true });
    dialog.showModal();
  });
}

function confirmed(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// An action: confirmed first; a 401 asks for the token and tries once more.
// A server with a token (its /status says so, redacted) is asked for it before the first
// write, rather than answering 401.
let tokenNeeded = false;
async function act(question, done, method, path, body) {
  if (!(await confirmed(question))) return;
  if (tokenNeeded && !token() && !((await askToken()) && token())) {
    say("Not done: this server takes actions only with its token", true);
    return;
  }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await api(path, { method, body, token: token() });
      say(done);
      refresh();
      return;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401 && attempt === 0) {
        say(err.message, true);
        if (await askToken()) continue;
      } else {
        say(err.message, true);
      }
      return;
    }
  }
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "scroll" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map(([text, cls]) => h("th", { class: cls || "" }, text)))),
      h("tbody", {}, rows)));
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function metaList(meta) {
  const keys = Object.keys(meta || {}).sort();
  if (!keys.length) return h("span", { class: "muted" }, "-");
  return h("span", { class: "mono" }, keys.map((k) => h("div", {}, `${k}=${meta[k]}`)));
}

function csv(text) {
  return (text || "").split(",").filter(Boolean);
}

// --- services --------------------------------------------------------------------------

const RANK = (s) => (s.critical ? 0 : s.warning ? 1 : s.unknown ? 2 : s.maintenance ? 3 : 4);
const STATUSES = ["passing", "warning", "critical", "unknown", "maintenance"];

function healthBar(s) {
  const total = Math.max(1, s.instances);
  return h("div", { class: "bar", title: STATUSES.map((k) => `${s[k]} ${k}`).join(", ") },
    STATUSES.filter((k) => s[k]).map((k) => h("span", { class: k, style: { width: `${(100 * s[k]) / total}%` } })));
}

function counts(s) {
  const parts = STATUSES.filter((k) => s[k]).map((k) => `${s[k]} ${k}`);
  return h("div", { class: "counts" }, `${s.instances} instance${s.instances === 1 ? "" : "s"}`,
    h("span", { class: "muted" }, parts.length ? ` · ${parts.join(", ")}` : ""));
}

const servicesView = {
  title: "services",
  mount(root, params) {
    this.text = h("input", { type: "search", id: "filter-text", placeholder: "Filter by name", value: params.get("q") || "" });
    this.tag = h("select", { id: "filter-tag" }, h("option", { value: "" }, "any tag"));
    this.status = h("select", { id: "filter-status" }, h("option", { value: "" }, "any status"),
      STATUSES.map((k) => h("option", { value: k }, `has ${k}`)));
    this.status.value = params.get("status") || "";
    this.wantTag = params.get("tag") || "";
    this.results = h("div", { id: "services" });
    const again = () => { this.keep(); this.render(); };
    this.text.addEventListener("input", debounce(again, 120));
    this.tag.addEventListener("change", again);
    this.status.addEventListener("change", again);
    root.append(h("h1", {}, "Services"),
      h("div", { class: "toolbar" }, this.text, this.tag, this.status), this.results);
  },
  keep() { // the filters go into the address, so a filtered view can be shared
    const q = new URLSearchParams();
    if (this.text.value) q.set("q", this.text.value);
    if (this.tag.value) q.set("tag", this.tag.value);
    if (this.status.value) q.set("status", this.status.value);
    const hash = `#/services${q.toString() ? `?${q}` : ""}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  },
  async update() {
    this.data = await api("/api/v1/services");
    const known = [...new Set(this.data.flatMap((s) => s.tags))].sort();
    const chosen = this.tag.value || this.wantTag;
    this.tag.replaceChildren(h("option", { value: "" }, "any tag"), ...known.map((t) => h("option", { value: t }, t)));
    if (known.includes(chosen)) this.tag.value = chosen;
    this.render();
  },
  render() {
    if (!this.data) return;
    const text = this.text.value.trim().toLowerCase();
    const tag = this.tag.value;
    const status = this.status.value;
    const shown = this.data
      .filter((s) => !text || s.name.toLowerCase().includes(text))
      .filter((s) => !tag || s.tags.includes(tag))
      .filter((s) => !status || s[status] > 0)
      .sort((a, b) => RANK(a) - RANK(b) || b.critical - a.critical || b.warning - a.warning || a.name.localeCompare(b.name));
    const rows = shown.map((s) => h("tr", { "data-service": s.name },
      h("td", {}, h("a", { href: `#/services/${encodeURIComponent(s.name)}` }, s.name),
        s.kinds.filter((k) => k !== "service").map((k) => h("span", { class: "tag" }, k))),
      h("td", {}, counts(s), healthBar(s)),
      h("td", { class: "mono" }, s.versions.join(", ") || h("span", { class: "muted" }, "-")),
      h("td", { class: "hide-narrow" }, tags(s.tags))));
    const n = this.data.length;
    this.results.replaceChildren(
      h("p", { class: "muted" }, `${shown.length} of ${n} service${n === 1 ? "" : "s"}, worst health first`),
      table([["Service"], ["Instances"], ["Versions"], ["Tags", "hide-narrow"]], rows,
        n ? "No service matches these filters." : "No service is registered yet."));
  },
};

// --- one service -------------------------------------------------------------------

function checkRows(inst, live) {
  // The server's own view of a check (live counts) when it runs it; else what is stored.
  const rows = live.length ? live : (inst.health || []).map((c) => ({ ...c, target: "" }));
  if (!rows.length) return h("span", { class: "muted" }, "no checks");
  return h("div", { class: "scroll" }, h("table", { class: "checks-table" },
    h("thead", {}, h("tr", {}, ["Check", "Status", "Output", "Last run"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((c) => h("tr", { "data-check": c.name },
      h("td", {}, c.name, h("span", { class: "muted" }, c.kind ? ` (${c.kind})` : "")),
      h("td", {}, badge(c.status), c.flapping ? h("span", { class: "tag" }, "flapping") : ""),
      h("td", { class: "output mono" }, c.output || h("span", { class: "muted" }, "-")),
      h("td", { title: c.last_run ? new Date(c.last_run * 1000).toISOString() : "" }, c.last_run ? ago(c.last_run) : "never"))))));
}

function instanceActions(inst) {
  const id = encodeURIComponent(inst.id);
  const buttons = [];
  if (inst.maintenance) {
    buttons.push(h("button", { type: "button", class: "quiet", "data-action": "maintenance-off",
      onclick: () => act(`Take ${inst.id} out of maintenance?`, `${inst.id} is out of maintenance`,
        "PUT", `/api/v1/instances/${id}/maintenance`, { enable: false }) }, "End maintenance"));
  } else {
    buttons.push(h("button", { type: "button", class: "quiet", "data-action": "maintenance-on",
      onclick: () => act(`Put ${inst.id} in maintenance? It stops receiving traffic.`, `${inst.id} is in maintenance`,
        "PUT", `/api/v1/instances/${id}/maintenance`, { enable: true, reason: "from the dashboard" }) }, "Maintenance"));
  }
  if ((inst.checks || []).length || (inst.health || []).length) {
    buttons.push(h("button", { type: "button", class: "quiet", "data-action": "check",
      onclick: () => act(`Run the checks of ${inst.id} now?`, `Checks of ${inst.id} ran`,
        "POST", `/api/v1/instances/${id}/check`) }, "Run checks"));
  }
  buttons.push(h("button", { type: "button", class: "danger", "data-action": "deregister",
    onclick: () => act(`Deregister ${inst.id}? It disappears from queries and DNS.`, `${inst.id} is deregistered`,
      "DELETE", `/api/v1/instances/${id}`) }, "Deregister"));
  return h("div", { class: "actions" }, buttons);
}

function configSection(config) {
  if (!config) return h("p", { class: "muted", id: "config" }, "No service config: clients use their defaults.");
  const parts = [
    ["Check template", config.check], ["DNS TTL", config.dns_ttl], ["Load balancer", config.load_balancer],
    ["Retry", config.retry], ["Circuit breaker", config.circuit_breaker], ["Timeout", config.timeout],
    ["Split", config.split && config.split.length ? config.split : null],
    ["Meta", config.meta && Object.keys(config.meta).length ? config.meta : null],
  ].filter(([, v]) => v !== null && v !== undefined);
  return h("div", { id: "config" }, facts(parts.map(([k, v]) =>
    [k, typeof v === "object" ? h("pre", { class: "json" }, JSON.stringify(v, null, 2)) : String(v)])));
}

function routeRows(routes) {
  return table([["Route"], ["Priority"], ["Match"], ["Subset"]], routes.map((r) => h("tr", { "data-route": r.name },
    h("td", {}, r.name), h("td", {}, String(r.priority)),
    h("td", { class: "mono" }, JSON.stringify(r.match)),
    h("td", {}, metaList(r.subset)))), "No route targets this service.");
}

function instanceTable(instances, checksByInstance, withService) {
  const rows = instances.flatMap((inst) => [
    h("tr", { "data-instance": inst.id, class: "instance" },
      h("td", {}, statusOf(inst)),
      h("td", { class: "mono" }, inst.id),
      withService ? h("td", {}, h("a", { href: `#/services/${encodeURIComponent(inst.service)}` }, inst.service)) : null,
      h("td", { class: "mono" }, `${inst.address}:${inst.port}`),
      h("td", { class: "mono" }, inst.version || h("span", { class: "muted" }, "-")),
      h("td", {}, inst.node ? h("a", { href: `#/nodes/${encodeURIComponent(inst.node)}` }, inst.node) : h("span", { class: "muted" }, "-")),
      h("td", { class: "hide-narrow" }, tags(inst.tags)),
      h("td", { class: "hide-narrow" }, metaList(inst.meta)),
      h("td", { class: "hide-narrow" }, String(inst.weight)),
      h("td", {}, instanceActions(inst))),
    h("tr", { class: "checks", "data-checks-of": inst.id },
      h("td", { colspan: withService ? 10 : 9 }, checkRows(inst, checksByInstance.get(inst.id) || []))),
  ]);
  const headers = [["Status"], ["Instance"], ...(withService ? [["Service"]] : []), ["Address"], ["Version"], ["Node"],
    ["Tags", "hide-narrow"], ["Meta", "hide-narrow"], ["Weight", "hide-narrow"], ["Actions"]];
  return table(headers, rows, "No instance.");
}

async function checksOf(params) {
  try {
    return await api(`/api/v1/checks?${params}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) return []; // a server that runs no checks
    throw err;
  }
}

function byInstance(rows) {
  const out = new Map();
  for (const r of rows) {
    if (!out.has(r.instance)) out.set(r.instance, []);
    out.get(r.instance).push(r);
  }
  return out;
}

const serviceView = {
  title: "services",
  mount(root, params, name) {
    this.name = name;
    this.body = h("div", {});
    root.append(h("p", {}, h("a", { href: "#/services" }, "← Services")), h("h1", {}, name), this.body);
  },
  async update() {
    const q = encodeURIComponent(this.name);
    const [instances, checks, configs, routes] = await Promise.all([
      api(`/api/v1/services/${q}`),
      checksOf(`service=${q}`),
      api("/api/v1/configs"), // the list, not .../config: no 404 for a service without one
      api("/api/v1/routes"),
    ]);
    const config = configs.find((c) => c.service === this.name) || null;
    const mine = routes.filter((r) => r.service === this.name);
    this.body.replaceChildren(
      h("h2", {}, `Instances (${instances.length})`),
      instanceTable(instances, byInstance(checks), false),
      h("h2", {}, "Config"), configSection(config),
      h("h2", {}, "Routes to this service"), routeRows(mine));
  },
};

// --- nodes --------------------------------------------------------------------------

const nodesView = {
  title: "nodes",
  mount(root) {
    this.body = h("div", { id: "nodes" });
    root.append(h("h1", {}, "Nodes"), this.body);
  },
  async update() {
    const nodes = await api("/api/v1/nodes");
    this.body.replaceChildren(table([["Node"], ["Status"], ["Address"], ["Last seen"], ["Instances"]],
      nodes.map((n) => h("tr", { "data-node": n.id },
        h("td", {}, h("a", { href: `#/nodes/${encodeURIComponent(n.id)}` }, n.id),
          n.registered ? "" : h("span", { class: "tag", title: "named by instances, no agent registered it" }, "unregistered")),
        h("td", {}, badge(n.status)),
        h("td", { class: "mono" }, n.address || h("span", { class: "muted" }, "-")),
        h("td", {}, n.last_seen ? ago(n.last_seen) : h("span", { class: "muted" }, "-")),
        h("td", {}, String(n.instances)))), "No node is known yet."));
  },
};

const nodeView = {
  title: "nodes",
  mount(root, params, id) {
    this.id = id;
    this.body = h("div", {});
    root.append(h("p", {}, h("a", { href: "#/nodes" }, "← Nodes")), h("h1", {}, id), this.body);
  },
  async update() {
    const q = encodeURIComponent(this.id);
    const [nodes, instances, checks] = await Promise.all([
      api("/api/v1/nodes"), // the list: nodes that instances name but nobody registered too
      api(`/api/v1/instances?node=${q}`),
      checksOf(`node=${q}`),
    ]);
    const node = nodes.find((n) => n.id === this.id) || null;
    const about = node && node.registered
      ? facts([["Status", badge(node.status)], ["Address", node.address || "-"],
        ["Last seen", node.last_seen ? ago(node.last_seen) : "-"], ["Meta", metaList(node.meta)]])
      : h("p", { class: "muted" }, "No agent registered this node; instances name it.");
    this.body.replaceChildren(about, h("h2", {}, `Instances (${instances.length})`),
      instanceTable(instances, byInstance(checks), true));
  },
};

// --- actor networks -----------------------------------------------------------------

const networksView = {
  title: "networks",
  mount(root) {
    this.body = h("div", { id: "networks" });
    root.append(h("h1", {}, "Actor networks"), this.body);
  },
  async update() {
    const [nets, actors] = await Promise.all([api("/api/v1/instances?kind=network"), api("/api/v1/instances?kind=actor")]);
    const perNet = new Map();
    for (const a of actors) perNet.set(a.meta.network, (perNet.get(a.meta.network) || 0) + 1);
    this.body.replaceChildren(table(
      [["Network"], ["Instance"], ["Status"], ["Capabilities"], ["Tags", "hide-narrow"], ["Load"], ["Actors"], ["Endpoint", "hide-narrow"]],
      nets.map((n) => {
        const id = n.meta.network_id || n.service;
        return h("tr", { "data-network": id },
          h("td", {}, h("a", { href: `#/networks/${encodeURIComponent(id)}` }, id)),
          h("td", { class: "mono" }, n.meta.instance_id || n.id),
          h("td", {}, statusOf(n)),
          h("td", {}, tags(csv(n.meta.capabilities))),
          h("td", { class: "hide-narrow" }, tags(n.tags)),
          h("td", {}, n.meta.load || "0"),
          h("td", {}, String(perNet.get(id) || 0)),
          h("td", { class: "mono hide-narrow" }, n.meta.endpoint || `${n.address}:${n.port}`));
      }), "No actor network is registered."));
  },
};

const networkView = {
  title: "networks",
  mount(root, params, id) {
    this.id = id;
    this.body = h("div", {});
    root.append(h("p", {}, h("a", { href: "#/networks" }, "← Actor networks")), h("h1", {}, id), this.body);
  },
  async update() {
    const q = encodeURIComponent(this.id);
    const [nets, actors] = await Promise.all([
      api(`/api/v1/instances?kind=network&meta.network_id=${q}`),
      api(`/api/v1/instances?kind=actor&meta.network=${q}`),
    ]);
    this.body.replaceChildren(
      h("h2", {}, `Instances (${nets.length})`),
      table([["Instance"], ["Status"], ["Capabilities"], ["Load"], ["Endpoint"]], nets.map((n) => h("tr", { "data-network-instance": n.meta.instance_id || n.id },
        h("td", { class: "mono" }, n.meta.instance_id || n.id), h("td", {}, statusOf(n)),
        h("td", {}, tags(csv(n.meta.capabilities))), h("td", {}, n.meta.load || "0"),
        h("td", { class: "mono" }, n.meta.endpoint || `${n.address}:${n.port}`))), "No instance of this network is registered."),
      h("h2", {}, `Actors (${actors.length})`),
      table([["Actor"], ["Component"], ["Capabilities"], ["In ports"], ["Out ports"], ["Instance"], ["Status"]],
        actors.map((a) => h("tr", { "data-actor": a.meta.actor || a.service },
          h("td", {}, a.meta.actor || a.service), h("td", { class: "mono" }, a.meta.component || "-"),
          h("td", {}, tags(csv(a.meta.capabilities))), h("td", {}, tags(csv(a.meta.inports))),
          h("td", {}, tags(csv(a.meta.outports))), h("td", { class: "mono" }, a.meta.network_instance || "-"),
          h("td", {}, statusOf(a)))), "This network has no actors."));
  },
};

// --- routing, refresh, live stream ---------------------------------------------------

let current = null;
let generation = 0;

function route() {
  const [path, query] = (location.hash.replace(/^#/, "") || "/services").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  const table = {
    services: parts[1] ? serviceView : servicesView,
    nodes: parts[1] ? nodeView : nodesView,
    networks: parts[1] ? networkView : networksView,
  };
  const chosen = table[parts[0]] || servicesView;
  const key = `${parts[0]}/${parts[1] || ""}`;
  if (current && current.key === key) return; // a filter changed the address: same view
  generation++;
  current = Object.create(chosen);
  current.key = key;
  view.replaceChildren();
  current.mount(view, params, parts[1]);
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.dataset.nav === chosen.title) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `Waypost · ${parts[1] || chosen.title}`;
  refresh();
}

// One refresh at a time; changes arriving meanwhile cause exactly one more, at most four a
// second: a registry taking thousands of writes a second costs a dashboard 4 reads.
const MIN_GAP_MS = 250;
let running = false;
let again = false;
let lastStart = 0;
async function refresh() {
  if (running) { again = true; return; }
  running = true;
  view.dataset.refreshing = "1"; // for tests and styles: a refresh is under way
  try {
    do {
      again = false;
      const wait = lastStart + MIN_GAP_MS - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      lastStart = Date.now();
      const mine = generation;
      const shown = current;
      try {
        await shown.update();
        if (mine === generation) view.dataset.updated = String(Date.now());
      } catch (err) {
        if (mine === generation) {
          view.querySelector(".error-box")?.remove();
          view.append(h("p", { class: "error-box" }, `Could not load: ${err.message}`));
        }
      }
    } while (again);
  } finally {
    running = false;
    delete view.dataset.refreshing;
  }
}

// The stream: the browser reconnects by itself (sending Last-Event-ID); when it gives up
// (an HTTP error, say the server restarting behind a proxy), we reopen from the last id.
let lastId = "";
let source = null;
let retryMs = 500;
function connect() {
  const params = new URLSearchParams();
  if (lastId) params.set("index", lastId.split(".")[0]);
  // EventSource sends no headers: the token goes in the query (the server accepts it there).
  if (token()) params.set("token", token());
  const query = params.toString();
  source = new EventSource(`/api/v1/events${query ? `?${query}` : ""}`);
  source.onopen = () => {
    live.dataset.state = "live";
    live.textContent = "live";
    retryMs = 500;
    refresh(); // whatever changed while the stream was away
  };
  const changed = (ev) => {
    if (ev.lastEventId) lastId = ev.lastEventId;
    refresh();
  };
  // Instances' events are named put and delete; other kinds' kind.put and kind.delete.
  for (const kind of ["", "node.", "service_config.", "route."]) {
    source.addEventListener(`${kind}put`, changed);
    source.addEventListener(`${kind}delete`, changed);
  }
  source.onerror = () => {
    live.dataset.state = "disconnected";
    live.textContent = "disconnected, reconnecting";
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      // An id the server no longer keeps (410) must not loop: after a failed resume,
      // start from now; the refresh on open re-reads everything anyway.
      if (retryMs > 4000) lastId = "";
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    }
  };
}

document.getElementById("token-button").addEventListener("click", async () => {
  if (await askToken()) {
    say(token() ? "Token saved for this tab" : "Token cleared");
    // What the page may read follows the token: read again, on a stream that carries it.
    if (source) source.close();
    connect();
    refresh();
  }
});
window.addEventListener("hashchange", route);
// Relative times ("3s ago") stay true without a change to wait for.
setInterval(() => { if (document.visibilityState === "visible" && !running) refresh(); }, 15000);
route();
connect();
function showTokenNeeded(needed) {
  tokenNeeded = needed;
  document.getElementById("token-button").textContent = needed ? "Token (needed for actions)" : "Token";
}
api("/status").then((status) => {
  const config = status.config || {};
  showTokenNeeded(Boolean(config.token) || config.acl_default_policy === "deny");
}).catch((error) => {
  // Under default deny /status answers only a token that may read it: one is needed.
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) showTokenNeeded(true);
});
