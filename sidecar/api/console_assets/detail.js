// One key: its facts, usage chart, networks, edit form, rotation, revocation and audit
// events. Each optional panel appears only when the API serves what it needs.
import { usageChart } from "./chart.js";
import { $, addressList, clear, el, problemText, showText, when } from "./dom.js";
import { chosenScopes, fillOptions, fillScopes, graceOptions } from "./forms.js";
import { addressesText, features, scopesText, stateOf } from "./keys.js";
import { ApiError, api } from "./session.js";

let current = null; // the key shown, as a list item
let networks = [];

export function currentKey() {
  return current;
}

export async function openKey(key, settings) {
  current = key;
  networks = [];
  showText($("detail-title"), `${key.key_prefix}…${key.description ? ` · ${key.description}` : ""}`);
  renderFacts(key);
  for (const id of ["usage-error", "edit-error", "rotate-error", "revoke-error"]) showText($(id), "");
  const editable = key.is_active && !key.rotated_to;
  $("rotate-panel").hidden = !editable;
  $("revoke-panel").hidden = !key.is_active;
  fillOptions($("rotate-grace"), graceOptions(settings.max_grace_seconds), settings.default_grace_seconds);
  prepareEdit(key, settings, editable);
  $("events-panel").hidden = true;
  await Promise.all([loadUsage(), loadEvents()]);
}

function renderFacts(key) {
  const facts = [
    ["Prefix", key.key_prefix],
    ["Description", key.description ?? ""],
    ["Environment", key.environment ?? "live"],
    features.scopes ? ["Scopes", scopesText(key.scopes)] : null,
    features.allowed_ips ? ["Allowed addresses", addressesText(key.allowed_ips)] : null,
    ["Created", when(key.created_at)],
    ["Last used", when(key.last_used_at, "Never")],
    ["Expires", when(key.expires_at, "Never")],
    ["State", stateOf(key)],
  ].filter(Boolean);
  const list = $("detail-facts");
  clear(list);
  for (const [name, value] of facts) list.append(el("dt", {}, name), el("dd", {}, value));
}

function prepareEdit(key, settings, editable) {
  // PATCH comes with scopes and allowed_ips (SPEC Part 3): list items carry them then.
  $("edit-panel").hidden = !(editable && (features.scopes || features.allowed_ips));
  $("edit-description").value = key.description ?? "";
  $("edit-description").maxLength = settings.max_description;
  fillScopes($("edit-scopes"), settings.scopes, "edit", key.scopes);
  $("edit-allowed-ips").value = (key.allowed_ips || []).join("\n");
}

export async function loadUsage() {
  const chart = $("usage-chart");
  try {
    const usage = await api("GET", `${current.id}/usage?days=${$("usage-days").value}`);
    clear(chart);
    chart.append(usageChart(usage));
    networks = usage.networks ?? [];
    renderNetworks(usage.networks);
  } catch (error) {
    showText($("usage-error"), problemText(error));
  }
}

function renderNetworks(found) {
  const panel = $("networks-panel");
  panel.hidden = found === undefined; // the API does not serve networks (yet)
  if (found === undefined) return;
  const body = $("networks-body");
  clear(body);
  for (const network of found) {
    body.append(el("tr", {},
      el("td", {}, el("code", {}, network.network)),
      el("td", {}, String(network.requests)),
      el("td", {}, when(network.last_seen))));
  }
  $("networks-empty").hidden = found.length > 0;
  $("networks-allow").hidden = found.length === 0 || !current.is_active;
}

export function networksToAllow() {
  return networks.map((network) => network.network);
}

async function loadEvents() {
  let answer;
  try {
    answer = await api("GET", `${current.id}/events?limit=50`);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) return;
    throw error;
  }
  const list = $("events-list");
  clear(list);
  for (const event of answer.events) list.append(eventItem(event));
  $("events-empty").hidden = answer.events.length > 0;
  $("events-panel").hidden = false;
}

function eventItem(event) {
  const actor = event.actor ? `${event.actor.type}${event.actor.id ? ` ${event.actor.id}` : ""}` : "";
  const details = [];
  for (const [field, change] of Object.entries(event.changes || {})) {
    details.push(`${field}: ${JSON.stringify(change.from)} → ${JSON.stringify(change.to)}`);
  }
  if (event.rotated_to) details.push(`rotated to ${event.rotated_to}`);
  if (event.rotated_from) details.push(`rotated from ${event.rotated_from}`);
  if (event.url) details.push(event.url);
  return el("li", { "data-action": event.action },
    el("time", { datetime: event.time }, when(event.time)), " ",
    el("strong", {}, event.action), actor ? ` by ${actor}` : "",
    event.client_ip ? ` from ${event.client_ip}` : "",
    details.length ? el("span", { class: "changes" }, ` · ${details.join("; ")}`) : null);
}

export async function saveEdit(settings) {
  const body = { description: $("edit-description").value.trim() || null };
  if (features.scopes || settings.scopes.length) body.scopes = chosenScopes($("edit-scopes"));
  if (features.allowed_ips) body.allowed_ips = addressList($("edit-allowed-ips").value);
  return patch(body, "edit-error");
}

export async function allowNetworks() {
  return patch({ allowed_ips: networksToAllow() }, "usage-error");
}

async function patch(body, errorId) {
  try {
    const updated = await api("PATCH", current.id, body);
    showText($("status"), "Key updated.");
    return updated;
  } catch (error) {
    showText($(errorId), problemText(error));
    return null;
  }
}

export async function rotate() {
  try {
    return await api("POST", `${current.id}/rotate`, {
      grace_period_seconds: Number($("rotate-grace").value),
    });
  } catch (error) {
    showText($("rotate-error"), problemText(error));
    return null;
  }
}

export async function revoke() {
  try {
    await api("DELETE", current.id);
    return true;
  } catch (error) {
    showText($("revoke-error"), problemText(error));
    return false;
  }
}

export function graceLabel() {
  const select = $("rotate-grace");
  return select.options[select.selectedIndex]?.textContent ?? "";
}
