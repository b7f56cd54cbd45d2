// The key list: one row per key, inactive keys behind a toggle (include_expired=true).
import { $, clear, el, when } from "./dom.js";
import { api } from "./session.js";

// A key's state as a person reads it.
export function stateOf(key) {
  if (key.is_active) return key.rotated_to ? "Rotated (in grace period)" : "Active";
  if (key.revoked_reason === "leaked") return "Revoked (leaked)";
  if (key.revoked_reason) return "Revoked";
  return key.rotated_to ? "Rotated" : "Expired";
}

export function scopesText(scopes) {
  if (scopes === undefined) return "";
  return scopes === null ? "All (unrestricted)" : scopes.join(", ");
}

export function addressesText(addresses) {
  if (addresses === undefined) return "";
  return addresses === null ? "Any" : addresses.join(", ");
}

// Which optional fields the API serves (SPEC Part 3 adds them to list items).
export const features = { scopes: false, allowed_ips: false };

function notice(keys) {
  for (const name of Object.keys(features)) {
    if (keys.some((key) => name in key)) features[name] = true;
  }
  for (const node of document.querySelectorAll("[data-needs]")) {
    node.hidden = !features[node.dataset.needs];
  }
}

export async function loadKeys() {
  const inactive = $("show-inactive").checked;
  const answer = await api("GET", inactive ? "?include_expired=true" : "");
  notice(answer.api_keys);
  return answer.api_keys;
}

export function renderKeys(keys, onManage) {
  const body = $("keys-body");
  clear(body);
  for (const key of keys) {
    const row = el("tr", { "data-key-id": key.id, class: key.is_active ? "" : "inactive" },
      el("td", {}, el("code", {}, `${key.key_prefix}…`)),
      el("td", { class: "description" }, key.description ?? ""),
      el("td", {}, key.environment ?? "live"),
      features.scopes ? el("td", { class: "scopes" }, scopesText(key.scopes)) : null,
      features.allowed_ips ? el("td", { class: "addresses" }, addressesText(key.allowed_ips)) : null,
      el("td", { class: "when" }, when(key.created_at, "—", false)),
      el("td", { class: "when" }, when(key.last_used_at, "Never", false)),
      el("td", { class: "when" }, when(key.expires_at, "Never", false)),
      el("td", { class: "state" }, stateOf(key)),
      el("td", {}, manageButton(key, onManage)),
    );
    body.append(row);
  }
  $("keys-empty").hidden = keys.length > 0;
  $("keys-table").hidden = keys.length === 0;
}

function manageButton(key, onManage) {
  const label = `Manage ${key.key_prefix}${key.description ? ` (${key.description})` : ""}`;
  const button = el("button", { type: "button", class: "manage", "aria-label": label }, "Manage");
  button.addEventListener("click", () => onManage(key));
  return button;
}
