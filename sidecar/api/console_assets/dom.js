// DOM helpers. Text from the API is only ever set with textContent: never parsed as markup.

export const $ = (id) => document.getElementById(id);

// el("td", {class: "x", "aria-label": "y"}, "text", childNode, ...)
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node) {
  node.replaceChildren();
}

export function showText(node, text) {
  node.textContent = text || "";
}

// "2026-12-07T19:51:38Z" -> "2026-12-07 19:51 UTC" (without " UTC" when `zone` is false);
// null -> fallback.
export function when(iso, fallback = "—", zone = true) {
  if (!iso) return fallback;
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return String(iso);
  return moment.toISOString().slice(0, 16).replace("T", " ") + (zone ? " UTC" : "");
}

export function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

// "203.0.113.0/24\n198.51.100.7, 2001:db8::/32" -> ["203.0.113.0/24", ...]; empty -> null.
export function addressList(text) {
  const items = text.split(/[\s,]+/).filter(Boolean);
  return items.length ? items : null;
}

// The errors a JSON API answer carries, as lines a person can read.
export function problemText(error) {
  const detail = error && error.detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const where = (item.loc || []).filter((part) => part !== "body").join(".");
        return where ? `${where}: ${item.msg}` : item.msg;
      })
      .join("\n");
  }
  if (typeof detail === "string") return detail;
  return error && error.message ? error.message : "Something went wrong.";
}
