// Generate a key, then show it once. The full key lives only in the reveal view's
// input while that view is open; leaving it wipes the key for good.
import { $, addressList, problemText, showText } from "./dom.js";
import { chosenScopes, expiresAt, expiryOptions, fillOptions, fillScopes } from "./forms.js";
import { api } from "./session.js";

export function prepareCreate(settings) {
  const form = $("create-form");
  form.reset();
  showText($("create-error"), "");
  $("create-description").maxLength = settings.max_description;
  fillOptions($("create-expiry"), expiryOptions(settings.max_lifetime_days), "");
  fillScopes($("create-scopes"), settings.scopes, "create");
}

export async function submitCreate() {
  const body = {
    description: $("create-description").value.trim() || null,
    environment: $("create-environment").value,
    expires_at: expiresAt($("create-expiry").value),
  };
  const scopes = chosenScopes($("create-scopes"));
  if (scopes) body.scopes = scopes;
  const addresses = addressList($("create-allowed-ips").value);
  if (addresses) body.allowed_ips = addresses;
  try {
    return await api("POST", "", body);
  } catch (error) {
    showText($("create-error"), problemText(error));
    return null;
  }
}

// Show a just-created (or rotated-to) key. `created` is the API's 201 body.
export function reveal(created, title) {
  showText($("reveal-title"), title);
  $("revealed-key").value = created.api_key;
  const facts = [created.environment ?? "live", created.description ?? ""].filter(Boolean);
  showText($("reveal-meta"), `Prefix ${created.key_prefix} · ${facts.join(" · ")}`);
  showText($("status"), "");
}

export function forgetRevealed() {
  $("revealed-key").value = "";
  showText($("reveal-meta"), "");
}

export async function copyRevealed() {
  const input = $("revealed-key");
  input.focus();
  input.select();
  try {
    await navigator.clipboard.writeText(input.value);
    showText($("status"), "Key copied to the clipboard.");
  } catch {
    // No clipboard permission (e.g. an insecure origin): the key is selected instead.
    showText($("status"), "Press Ctrl+C (⌘C) to copy the selected key.");
  }
}
