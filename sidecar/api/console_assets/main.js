// The API Keys page: sign in, list, create (the key shown once), and manage one key.
import { copyRevealed, forgetRevealed, prepareCreate, reveal, submitCreate } from "./create.js";
import {
  allowNetworks, currentKey, graceLabel, loadUsage, networksToAllow, openKey, revoke, rotate, saveEdit,
} from "./detail.js";
import { $, problemText, showText } from "./dom.js";
import { loadKeys, renderKeys } from "./keys.js";
import { configure, onSignedOut, signIn, signOut, signedIn } from "./session.js";

const VIEWS = ["sign-in-view", "list-view", "create-view", "reveal-view", "detail-view"];
let settings = null;

function show(view) {
  if (!$("reveal-view").hidden && view !== "reveal-view") forgetRevealed();
  for (const id of VIEWS) $(id).hidden = id !== view;
  $("sign-out").hidden = !signedIn();
  // Move the keyboard focus to the new view's heading, so the next Tab starts there.
  $(view).querySelector("h1").focus();
}

// A <dialog> confirmation; resolves true when confirmed.
function confirmAction(title, text, confirmLabel) {
  const dialog = $("confirm-dialog");
  showText($("confirm-title"), title);
  showText($("confirm-text"), text);
  showText($("confirm-ok"), confirmLabel);
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").removeEventListener("click", ok);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("close", cancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    $("confirm-ok").addEventListener("click", ok);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", cancel); // Escape
    dialog.showModal();
  });
}

async function showList() {
  showText($("list-error"), "");
  try {
    renderKeys(await loadKeys(), manage);
  } catch (error) {
    if (!signedIn()) return;
    showText($("list-error"), problemText(error));
  }
  show("list-view");
}

async function manage(key) {
  show("detail-view");
  try {
    await openKey(key, settings);
  } catch (error) {
    showText($("usage-error"), problemText(error));
  }
}

async function refreshCurrent(updated) {
  // The list item holds every field the detail view shows.
  await openKey(updated, settings);
}

function wire() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showText($("sign-in-error"), "");
    try {
      await signIn($("email").value.trim(), $("password").value);
    } catch (error) {
      showText($("sign-in-error"), error.status === 401 ? "Wrong email or password." : problemText(error));
      return;
    }
    $("password").value = "";
    await showList();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("show-inactive").addEventListener("change", () => showList());
  $("new-key").addEventListener("click", () => {
    prepareCreate(settings);
    show("create-view");
  });
  $("create-cancel").addEventListener("click", () => showList());
  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await submitCreate();
    if (created) {
      reveal(created, "Your new API key");
      show("reveal-view");
    }
  });
  $("copy-key").addEventListener("click", () => copyRevealed());
  $("reveal-done").addEventListener("click", () => showList());
  $("detail-back").addEventListener("click", () => showList());
  $("usage-days").addEventListener("change", () => loadUsage());
  $("edit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const updated = await saveEdit(settings);
    if (updated) await refreshCurrent(updated);
  });
  $("networks-allow").addEventListener("click", async () => {
    const list = networksToAllow().join(", ");
    if (await confirmAction("Restrict this key?", `Only requests from ${list} will be accepted.`, "Restrict")) {
      const updated = await allowNetworks();
      if (updated) await refreshCurrent(updated);
    }
  });
  $("rotate-key").addEventListener("click", async () => {
    const key = currentKey();
    const text = `A new key replaces ${key.key_prefix}…; the old one keeps working for: ${graceLabel()}.`;
    if (!(await confirmAction("Rotate this key?", text, "Rotate"))) return;
    const created = await rotate();
    if (created) {
      reveal(created, "Your rotated API key");
      show("reveal-view");
    }
  });
  $("revoke-key").addEventListener("click", async () => {
    const key = currentKey();
    const text = `${key.key_prefix}… stops working at once, everywhere. This cannot be undone.`;
    if (!(await confirmAction("Revoke this key?", text, "Revoke key"))) return;
    if (await revoke()) {
      showText($("status"), `Key ${key.key_prefix}… revoked.`);
      await showList();
    }
  });
}

async function start() {
  try {
    const response = await fetch("config.json", { cache: "no-store", credentials: "omit" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    settings = await response.json();
  } catch (error) {
    showText($("sign-in-error"), `The page could not load its settings (${error.message}). Reload to try again.`);
    return;
  }
  configure(settings);
  onSignedOut(() => {
    showText($("status"), "You are signed out.");
    show("sign-in-view");
  });
  wire();
  $("email").focus();
}

start();
