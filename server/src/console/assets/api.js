// The console's only way to the server: fhirgate's public API with the
// signed-in user's bearer token. Tokens live in this module's memory only:
// never in localStorage, sessionStorage, a cookie or a URL. A reload signs
// in again through /oauth2/authorize (docs/console.md).

export const base = new URL('../../', import.meta.url).href;
export const CLIENT_ID = '0c0501e0-0000-4000-8000-00000000c0de';
const REDIRECT_URI = `${base}console/callback`;
const PENDING = 'fhirgate.console.signin';
// Refresh this long before the access token expires.
const REFRESH_MARGIN_MS = 60_000;

let session = null;
let refreshTimer = null;
let refreshing = null;
const expiredListeners = [];

export class ApiError extends Error {
  constructor(status, body) {
    const issues = body?.resourceType === 'OperationOutcome' ? body.issue || [] : [];
    const message = issues.map((i) => i.diagnostics || i.details?.text).filter(Boolean).join('; ')
      || body?.error_description || body?.error || `The server answered ${status}`;
    super(message);
    this.status = status;
    this.issues = issues;
    this.body = body;
  }
}

export function onExpired(listener) {
  expiredListeners.push(listener);
}

export function signedIn() {
  return session !== null;
}

function randomString(bytes) {
  const data = crypto.getRandomValues(new Uint8Array(bytes));
  return base64url(data);
}

function base64url(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// Starts the authorization code flow with PKCE. What the callback needs
// (verifier, state, where to return) waits in sessionStorage for the
// round trip only; it is no credential on its own.
// `project` names a project-scoped user's project (a patient's); left out,
// the last one given in this tab is used again, so a reload signs the same
// person in; null forgets it.
const PROJECT_HINT = 'fhirgate.console.project';

export async function signIn({ project, returnTo } = {}) {
  if (project === undefined) project = sessionStorage.getItem(PROJECT_HINT) || null;
  if (project) sessionStorage.setItem(PROJECT_HINT, project);
  else sessionStorage.removeItem(PROJECT_HINT);
  const verifier = randomString(48);
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  const state = randomString(24);
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, returnTo: returnTo || '' }));
  const params = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: REDIRECT_URI,
    scope: 'openid offline_access',
    state,
    code_challenge: base64url(new Uint8Array(digest)),
    code_challenge_method: 'S256',
  });
  if (project) params.set('project_id', project);
  window.location.assign(`${base}oauth2/authorize?${params}`);
}

// Redeems the code the authorization server sent back; answers where to go.
export async function completeSignIn(query) {
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  sessionStorage.removeItem(PENDING);
  if (query.get('error')) {
    throw new ApiError(400, { error: query.get('error'), error_description: query.get('error_description') });
  }
  if (!pending || pending.state !== query.get('state') || !query.get('code')) {
    throw new ApiError(400, { error_description: 'This sign-in did not start here or was already used; sign in again.' });
  }
  const body = await token({
    grant_type: 'authorization_code',
    code: query.get('code'),
    redirect_uri: REDIRECT_URI,
    client_id: CLIENT_ID,
    code_verifier: pending.verifier,
  });
  keep(body);
  return pending.returnTo;
}

async function token(form) {
  const response = await fetch(`${base}oauth2/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function keep(body) {
  session = {
    accessToken: body.access_token,
    refreshToken: body.refresh_token || null,
    expiresAt: Date.now() + (body.expires_in || 3600) * 1000,
  };
  clearTimeout(refreshTimer);
  if (session.refreshToken) {
    const wait = Math.max(5_000, session.expiresAt - Date.now() - REFRESH_MARGIN_MS);
    refreshTimer = setTimeout(() => { refresh().catch(() => {}); }, wait);
  }
}

// Silent refresh with the (rotating) refresh token; false when the sign-in
// is over (revoked, expired, or never had one).
export function refresh() {
  if (!session?.refreshToken) return Promise.resolve(false);
  if (!refreshing) {
    refreshing = token({
      grant_type: 'refresh_token',
      refresh_token: session.refreshToken,
      client_id: CLIENT_ID,
    }).then((body) => { keep(body); return true; }, () => false)
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

function expire() {
  session = null;
  clearTimeout(refreshTimer);
  for (const listener of expiredListeners) listener();
}

export async function signOut() {
  if (session) {
    await fetch(`${base}oauth2/logout`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${session.accessToken}` },
    }).catch(() => {});
  }
  session = null;
  clearTimeout(refreshTimer);
}

// One API call. `body` is sent as JSON (FHIR JSON under /fhir/). A 401
// tries one refresh; if that fails the session has expired.
export async function api(path, { method = 'GET', body, contentType, anonymous = false } = {}) {
  const send = () => {
    const headers = { Accept: 'application/fhir+json, application/json' };
    if (!anonymous && session) headers.Authorization = `Bearer ${session.accessToken}`;
    if (body !== undefined) {
      headers['Content-Type'] = contentType || (path.startsWith('fhir/') ? 'application/fhir+json' : 'application/json');
    }
    return fetch(base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  };
  let response = await send();
  if (response.status === 401 && !anonymous) {
    if (await refresh()) response = await send();
    if (response.status === 401) {
      expire();
      throw new ApiError(401, { error_description: 'Your session has expired; sign in again.' });
    }
  }
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { text }; }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

// FHIR helpers.
export const fhir = {
  search: (type, query = '') => api(`fhir/R4/${type}${query ? `?${query}` : ''}`),
  read: (type, id) => api(`fhir/R4/${type}/${encodeURIComponent(id)}`),
  history: (type, id) => api(`fhir/R4/${type}/${encodeURIComponent(id)}/_history`),
  create: (resource) => api(`fhir/R4/${resource.resourceType}`, { method: 'POST', body: resource }),
  update: (resource) => api(`fhir/R4/${resource.resourceType}/${encodeURIComponent(resource.id)}`, { method: 'PUT', body: resource }),
  remove: (type, id) => api(`fhir/R4/${type}/${encodeURIComponent(id)}`, { method: 'DELETE' }),
};

// A search URL the server gave back (a Bundle link), as a path for api().
export function relative(url) {
  return url.startsWith(base) ? url.slice(base.length) : null;
}

export function link(bundle, relation) {
  const found = (bundle?.link || []).find((l) => l.relation === relation);
  return found ? relative(found.url) : null;
}

export function display(resource) {
  if (!resource) return '';
  const name = (resource.name || [])[0];
  if (typeof resource.name === 'string') return resource.name;
  if (name) {
    const text = name.text || [...(name.given || []), name.family].filter(Boolean).join(' ');
    if (text) return text;
  }
  return `${resource.resourceType}/${resource.id}`;
}

export function email(resource) {
  if (resource?.email) return resource.email;
  return (resource?.telecom || []).find((t) => t.system === 'email')?.value || '';
}
