// Helpers of the dashboard: the API call, DOM building (text only: nothing the registry
// holds is ever parsed as HTML), and small renderers.

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

// A JSON call to the API; a non-2xx answer throws ApiError with the server's message.
// The token kept for this tab (sessionStorage): sent with reads too, so that a server
// with ACLs shows what the token may read.
export function storedToken() {
  try {
    return sessionStorage.getItem("waypost-token") || "";
  } catch {
    return "";
  }
}

export async function api(path, { method = "GET", body, token = storedToken() } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, data && data.field);
  }
  return data;
}

// h("a", {href: "#"}, "text", child, [more]): an element; attributes named on* are
// listeners; null, undefined and "" children are skipped; strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  const add = (child) => {
    if (child === null || child === undefined || child === "" || child === false) return;
    if (Array.isArray(child)) child.forEach(add);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  };
  children.forEach(add);
  return el;
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

// An instance's status as queries see it: maintenance first.
export function statusOf(inst) {
  if (inst.maintenance) {
    return h("span", { title: inst.maintenance_reason || "in maintenance" }, badge("maintenance"));
  }
  return h("span", { title: inst.output || "" }, badge(inst.status));
}

export function tags(list) {
  if (!list || !list.length) return h("span", { class: "muted" }, "-");
  return list.map((t) => h("span", { class: "tag" }, t));
}

// "12s ago" from a Unix time in seconds.
export function ago(seconds) {
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
