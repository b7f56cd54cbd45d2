// The signed-in user's tokens, in this module's memory only: never in a cookie,
// localStorage or sessionStorage. A reload signs the user out.

let tokens = null; // {access, refresh}
let settings = null;
const signedOutListeners = [];

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.detail = body?.detail;
  }
}

export function configure(pageSettings) {
  settings = pageSettings;
}

export function onSignedOut(listener) {
  signedOutListeners.push(listener);
}

export function signedIn() {
  return tokens !== null;
}

export function signOut() {
  tokens = null;
  for (const listener of signedOutListeners) listener();
}

async function send(method, url, body, headers = {}) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? headers : { ...headers, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { detail: text.slice(0, 200) };
  }
  return { status: response.status, body: parsed };
}

function keep(answer) {
  const { access_token: access, refresh_token: refresh } = answer.body || {};
  if (answer.status !== 200 || typeof access !== "string") {
    throw new ApiError(answer.status, answer.body);
  }
  tokens = { access, refresh: typeof refresh === "string" ? refresh : null };
}

export async function signIn(email, password) {
  keep(await send("POST", settings.login_url, { email, password }));
}

async function renew() {
  if (!tokens?.refresh) return false;
  const answer = await send("POST", settings.refresh_url, { refresh_token: tokens.refresh });
  if (answer.status !== 200) return false;
  keep(answer);
  return true;
}

// A call to the JSON API as the signed-in user; the access token is renewed once on 401.
export async function api(method, path, body) {
  if (!tokens) throw new ApiError(401, { detail: "Not signed in" });
  const url = settings.keys_url + path;
  let answer = await send(method, url, body, { Authorization: `Bearer ${tokens.access}` });
  if (answer.status === 401 && (await renew())) {
    answer = await send(method, url, body, { Authorization: `Bearer ${tokens.access}` });
  }
  if (answer.status === 401) {
    signOut();
  }
  if (answer.status < 200 || answer.status >= 300) {
    throw new ApiError(answer.status, answer.body);
  }
  return answer.body;
}
