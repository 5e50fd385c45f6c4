// ClientApplications (create with the secret shown once, rotate the secret,
// edit redirect URIs) and Bots (create, view).

import { api, fhir } from '../api.js';
import { button, clearErrors, copyText, definitions, field, h, input, notice, showErrors } from '../dom.js';
import { projectId, routeLink } from '../app.js';
import { searchList } from './common.js';

function programs(type) {
  return searchList({
    path: `fhir/R4/ProjectMembership?project=Project/${projectId()}&profile-type=${type}&_include=ProjectMembership:profile`,
    caption: `${type === 'Bot' ? 'Bots' : 'Clients'} of this project`,
    entries: (bundle) => (bundle.entry || []).filter((e) => e.search?.mode === 'include').map((e) => e.resource),
    columns: [
      { label: 'Name', cell: (c) => c.name || '' },
      { label: 'Id', cell: (c) => h('span', { class: 'secret' }, c.id) },
      { label: 'Redirect URIs', cell: (c) => uris(c).join(' ') },
      { label: '', cell: (c) => (type === 'Bot'
        ? routeLink(`console/resources/Bot/${c.id}`, `View ${c.name || 'bot'}`)
        : routeLink(`console/clients?id=${c.id}`, `Manage ${c.name || 'client'}`)) },
    ],
  });
}

function uris(client) {
  return [...new Set([client.redirectUri, ...(client.redirectUris || [])].filter(Boolean))];
}

function secretBox(secret, label) {
  const status = h('span', { role: 'status', class: 'muted' });
  return h('div', { class: 'notice good' },
    h('p', {}, label),
    h('p', {}, h('code', { class: 'secret', 'data-secret': '' }, secret)),
    button('Copy secret', () => copyText(secret, status), { class: 'secondary' }), status);
}

export async function page({ query }) {
  if (query.get('id')) return manage(query.get('id'));
  const name = input('text', { required: true, autocomplete: 'off' });
  const description = input('text', { autocomplete: 'off' });
  const redirects = h('textarea', { rows: 3, class: 'uris' });
  const summary = h('div', {});
  const result = h('div', { 'aria-live': 'polite' });
  const form = h('form', { 'aria-label': 'New client' },
    field('Name', name, { name: 'name' }),
    field('Description', description, { name: 'description' }),
    field('Redirect URIs (one per line)', redirects, { name: 'redirectUris' }),
    h('button', { type: 'submit' }, 'Create client'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const list = redirects.value.split('\n').map((s) => s.trim()).filter(Boolean);
    const body = { name: name.value.trim(), ...(description.value.trim() ? { description: description.value.trim() } : {}), ...(list.length ? { redirectUris: list } : {}) };
    try {
      const client = await api(`admin/projects/${projectId()}/client`, { method: 'POST', body });
      result.replaceChildren(
        definitions([['Client id', h('code', { class: 'secret', 'data-client-id': '' }, client.id)], ['Name', client.name]]),
        secretBox(client.secret, 'The client secret, shown this once: copy it now.'));
      form.reset();
      result.querySelector('button').focus();
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  return [h('h1', {}, 'Clients'), programs('ClientApplication'), h('h2', {}, 'Create a client'), summary, form, result];
}

async function manage(id) {
  let client = await fhir.read('ClientApplication', id);
  const redirects = h('textarea', { rows: 3, class: 'uris' }, uris(client).join('\n'));
  const summary = h('div', {});
  const form = h('form', { 'aria-label': 'Redirect URIs' },
    field('Redirect URIs (one per line)', redirects, { name: 'redirectUris' }),
    h('button', { type: 'submit' }, 'Save redirect URIs'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const list = redirects.value.split('\n').map((s) => s.trim()).filter(Boolean);
    const changed = { ...client };
    delete changed.redirectUri;
    if (list.length) changed.redirectUris = list; else delete changed.redirectUris;
    try {
      client = await fhir.update(changed);
      summary.replaceChildren(notice('Saved.', 'good'));
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  const rotated = h('div', { 'aria-live': 'polite' });
  const rotate = button('Rotate the secret', async () => {
    try {
      const result = await api(`fhir/R4/ClientApplication/${id}/$rotate-secret`, { method: 'POST' });
      rotated.replaceChildren(secretBox(result.secret, 'The new secret, shown this once. The old one keeps working for a while.'));
    } catch (e) {
      rotated.replaceChildren(notice(e.message, 'bad'));
    }
  });
  return [h('h1', {}, client.name || 'Client'), definitions([['Client id', client.id], ['Description', client.description]]),
    summary, form, h('h2', {}, 'Secret'), rotate, rotated, h('p', {}, routeLink('console/clients', 'All clients'))];
}

export function bots() {
  const name = input('text', { required: true, autocomplete: 'off' });
  const description = input('text', { autocomplete: 'off' });
  const summary = h('div', {});
  const result = h('div', { 'aria-live': 'polite' });
  const form = h('form', { 'aria-label': 'New bot' },
    field('Name', name, { name: 'name' }),
    field('Description', description, { name: 'description' }),
    h('button', { type: 'submit' }, 'Create bot'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      const bot = await api(`admin/projects/${projectId()}/bot`, { method: 'POST', body: { name: name.value.trim(), ...(description.value.trim() ? { description: description.value.trim() } : {}) } });
      result.replaceChildren(notice(`Created ${bot.name}.`, 'good'), routeLink(`console/resources/Bot/${bot.id}`, `View ${bot.name}`));
      form.reset();
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  return [h('h1', {}, 'Bots'), programs('Bot'), h('h2', {}, 'Create a bot'), summary, form, result];
}
