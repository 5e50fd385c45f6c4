// The console's shell: who is signed in, the navigation bar, and a router
// over the History API (so links, reloads and the back button behave).

import { api, base, completeSignIn, onExpired, signIn, signOut, signedIn } from './api.js';
import { h, notice } from './dom.js';
import * as links from './pages/links.js';
import * as project from './pages/project.js';
import * as members from './pages/members.js';
import * as invite from './pages/invite.js';
import * as clients from './pages/clients.js';
import * as policies from './pages/policies.js';
import * as resources from './pages/resources.js';
import * as audit from './pages/audit.js';
import * as account from './pages/account.js';

// What the signed-in user is (from /auth/me), shared with the pages.
export const context = { me: null };

// [pattern, page, who may open it]. `public` pages need no sign-in;
// `admin` pages need a project admin; `member` pages any non-patient.
const routes = [
  ['console/callback', callback, 'public'],
  ['signin', links.signInPage, 'public'],
  ['console/signin', links.signInPage, 'public'],
  ['console/resetpassword', links.resetPassword, 'public'],
  ['setpassword/:id/:secret', links.setPassword, 'public'],
  ['verifyemail/:id/:secret', links.verifyEmail, 'public'],
  ['console/', project.page, 'admin'],
  ['console/members', members.page, 'admin'],
  ['console/members/:id', members.detail, 'admin'],
  ['console/invite', invite.page, 'admin'],
  ['console/clients', clients.page, 'admin'],
  ['console/bots', clients.bots, 'admin'],
  ['console/policies', policies.page, 'admin'],
  ['console/policies/:id', policies.edit, 'admin'],
  ['console/resources', resources.page, 'member'],
  ['console/resources/:type/:id', resources.detail, 'member'],
  ['console/audit', audit.page, 'admin'],
  ['console/account', account.page, 'any'],
];

const NAV = [
  ['console/', 'Project', 'admin'],
  ['console/members', 'Members', 'admin'],
  ['console/invite', 'Invite', 'admin'],
  ['console/clients', 'Clients', 'admin'],
  ['console/bots', 'Bots', 'admin'],
  ['console/policies', 'Access policies', 'admin'],
  ['console/resources', 'Resources', 'member'],
  ['console/audit', 'Audit', 'admin'],
  ['console/account', 'Account', 'any'],
];

export function role() {
  const me = context.me;
  if (!me) return 'none';
  if (me.membership?.admin || me.project?.superAdmin) return 'admin';
  if ((me.profile?.resourceType || '') === 'Patient') return 'patient';
  return 'member';
}

function allowed(need) {
  const r = role();
  if (need === 'public' || need === 'any') return true;
  if (need === 'member') return r === 'admin' || r === 'member';
  return r === 'admin';
}

export function projectId() {
  return context.me?.project?.id;
}

export function isSuperAdmin() {
  return context.me?.project?.superAdmin === true;
}

function match(path) {
  for (const [pattern, page, need] of routes) {
    const want = pattern.split('/');
    const got = path.split('/');
    if (want.length !== got.length) continue;
    const params = {};
    if (want.every((part, i) => {
      if (part.startsWith(':')) { params[part.slice(1)] = decodeURIComponent(got[i]); return got[i] !== ''; }
      return part === got[i];
    })) return { page, need, params };
  }
  return null;
}

// The path under the base URL, e.g. `console/members`.
function currentPath() {
  const path = window.location.pathname;
  const prefix = new URL(base).pathname;
  return path.startsWith(prefix) ? path.slice(prefix.length) : path;
}

export function navigate(path, { replace = false } = {}) {
  const url = base + path;
  if (replace) window.history.replaceState(null, '', url);
  else window.history.pushState(null, '', url);
  render();
}

// Links inside the app stay in the app.
document.addEventListener('click', (event) => {
  const anchor = event.target.closest('a[data-route]');
  if (!anchor || event.defaultPrevented || event.button !== 0
      || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(anchor.dataset.route);
});

export function routeLink(path, label, props = {}) {
  return h('a', { href: base + path, 'data-route': path, ...props }, label);
}

window.addEventListener('popstate', () => render());

onExpired(() => {
  context.me = null;
  drawChrome();
  const main = document.getElementById('main');
  main.replaceChildren(
    h('h1', { tabindex: '-1' }, 'Session expired'),
    notice('Your session has expired or was signed out elsewhere.', 'bad'),
    h('button', { type: 'button', onClick: () => signIn({ returnTo: currentPath() + window.location.search }) }, 'Sign in again'),
  );
  main.querySelector('h1').focus();
});

async function loadMe() {
  context.me = await api('auth/me');
}

function drawChrome() {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  const path = currentPath();
  if (!context.me) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  const items = NAV.filter(([, , need]) => allowed(need)).map(([target, label]) => {
    const current = target === 'console/' ? path === target : path.startsWith(target);
    return h('li', {}, routeLink(target, label, current ? { 'aria-current': 'page' } : {}));
  });
  nav.replaceChildren(h('ul', {}, items));
  const me = context.me;
  const name = me.profile ? displayName(me.profile) : me.user?.email;
  who.replaceChildren(
    h('span', {}, name, ' · ', me.project?.name || ''),
    h('button', { type: 'button', class: 'secondary', onClick: async () => {
      await signOut();
      context.me = null;
      navigate('console/signin?signedout=1');
    } }, 'Sign out'),
  );
}

function displayName(profile) {
  const name = (profile.name || [])[0];
  return name ? [...(name.given || []), name.family].filter(Boolean).join(' ') : `${profile.resourceType}`;
}

let rendering = 0;

export async function render() {
  const ticket = ++rendering;
  const path = currentPath();
  const main = document.getElementById('main');
  document.getElementById('banner').replaceChildren();
  const found = match(path) || (path === 'console' ? match('console/') : null);
  if (!found) {
    main.replaceChildren(h('h1', { tabindex: '-1' }, 'Not found'),
      h('p', {}, 'There is no console page here. '), routeLink('console/', 'Go to the console'));
    return;
  }
  if (found.need !== 'public' && !signedIn()) {
    // After a reload the tokens are gone: sign in again, then come back here.
    main.replaceChildren(h('p', { class: 'loading' }, 'Signing in…'));
    await signIn({ returnTo: path + window.location.search });
    return;
  }
  if (found.need !== 'public' && !context.me) {
    try { await loadMe(); } catch (e) {
      main.replaceChildren(h('h1', {}, 'Could not load your account'), notice(e.message, 'bad'));
      return;
    }
  }
  drawChrome();
  if (found.need !== 'public' && !allowed(found.need)) {
    // Patients and other members land on what they may see.
    navigate(role() === 'member' ? 'console/resources' : 'console/account', { replace: true });
    return;
  }
  main.replaceChildren(h('p', { class: 'loading', role: 'status' }, 'Loading…'));
  const query = new URLSearchParams(window.location.search);
  let content;
  try {
    content = await found.page({ params: found.params, query });
  } catch (e) {
    if (e.status === 401) return;
    content = [h('h1', {}, 'Something went wrong'), notice(e.message, 'bad')];
  }
  if (ticket !== rendering) return;
  main.replaceChildren(...[content].flat());
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    document.title = `${heading.textContent} – fhirgate console`;
    heading.focus();
  }
}

async function callback({ query }) {
  try {
    const returnTo = await completeSignIn(query);
    await loadMe();
    const target = returnTo && !returnTo.startsWith('console/callback') && !returnTo.startsWith('console/signin') ? returnTo : 'console/';
    setTimeout(() => navigate(target, { replace: true }), 0);
    return h('p', { class: 'loading' }, 'Signed in…');
  } catch (e) {
    window.history.replaceState(null, '', `${base}console/signin`);
    return [h('h1', {}, 'Sign-in failed'), notice(e.message, 'bad'),
      h('button', { type: 'button', onClick: () => signIn({}) }, 'Sign in')];
  }
}

render();
