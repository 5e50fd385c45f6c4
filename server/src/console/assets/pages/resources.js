// Resources: a type, a FHIR search query, results in pages; one resource's
// JSON, history, edit and delete.

import { api, display, fhir, link } from '../api.js';
import { button, field, formatDate, h, input, notice, table } from '../dom.js';
import { navigate, routeLink } from '../app.js';
import { jsonEditor } from './policies.js';

let types = null;

async function resourceTypes() {
  if (!types) {
    const metadata = await api('fhir/R4/metadata').catch(() => null);
    types = (metadata?.rest?.[0]?.resource || []).map((r) => r.type).sort();
  }
  return types;
}

export async function page({ query }) {
  const type = query.get('type') || 'Patient';
  const search = query.get('q') || '';
  const known = await resourceTypes();
  const typeInput = input('text', { value: type, list: 'resource-types', autocomplete: 'off', required: true });
  const queryInput = input('search', { value: search, autocomplete: 'off', placeholder: 'name=smith&_count=20', spellcheck: 'false' });
  const form = h('form', { role: 'search', class: 'row' },
    field('Resource type', typeInput, { name: 'type' }),
    field('Search query', queryInput, { name: 'q', hint: 'FHIR search parameters, e.g. name=smith&_count=20' }),
    h('button', { type: 'submit' }, 'Search'),
    h('datalist', { id: 'resource-types' }, known.map((t) => h('option', { value: t }))));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const params = new URLSearchParams({ type: typeInput.value.trim() });
    if (queryInput.value.trim()) params.set('q', queryInput.value.trim());
    navigate(`console/resources?${params}`);
  });
  const results = h('div', { 'aria-live': 'polite' });
  const prev = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Next page');
  let pages = {};
  const load = async (path) => {
    results.replaceChildren(h('p', { class: 'loading' }, 'Searching…'));
    try {
      const bundle = await api(path);
      const rows = (bundle.entry || []).map((e) => e.resource).filter(Boolean);
      results.replaceChildren(
        h('p', { class: 'muted', role: 'status' }, rows.length ? `${rows.length} shown${bundle.total !== undefined ? ` of ${bundle.total}` : ''}` : ''),
        table([
          { label: 'Type', cell: (r) => r.resourceType },
          { label: 'Name', cell: (r) => routeLink(`console/resources/${r.resourceType}/${r.id}`, display(r)) },
          { label: 'Id', cell: (r) => r.id },
          { label: 'Updated', cell: (r) => formatDate(r.meta?.lastUpdated) },
        ], rows));
      pages = { next: link(bundle, 'next'), previous: link(bundle, 'previous') };
      next.disabled = !pages.next;
      prev.disabled = !pages.previous;
    } catch (e) {
      results.replaceChildren(notice(e.message, 'bad'));
    }
  };
  prev.addEventListener('click', () => pages.previous && load(pages.previous));
  next.addEventListener('click', () => pages.next && load(pages.next));
  if (/^[A-Za-z]+$/.test(type)) load(`fhir/R4/${type}${search ? `?${search.replace(/^\?/, '')}` : ''}`);
  else results.replaceChildren(notice('A resource type is letters only, like Patient.', 'bad'));
  return [h('h1', {}, 'Resources'), form, results, h('div', { class: 'pager' }, prev, next),
    h('p', {}, routeLink(`console/resources/${encodeURIComponent(type)}/new`, `New ${type}`))];
}

export async function detail({ params, query }) {
  const { type, id } = params;
  const back = routeLink(`console/resources?type=${encodeURIComponent(type)}`, `Search ${type}`);
  if (id === 'new') {
    return jsonEditor({
      title: `New ${type}`,
      resource: { resourceType: type },
      save: async (value) => {
        const created = await fhir.create(value);
        navigate(`console/resources/${type}/${created.id}`, { replace: true });
        return created;
      },
      back,
    });
  }
  const resource = await fhir.read(type, id);
  const view = query.get('view') || 'json';
  const tabs = h('div', { class: 'tabs', role: 'navigation', 'aria-label': 'Resource views' },
    [['json', 'JSON'], ['history', 'History'], ['edit', 'Edit'], ['delete', 'Delete']].map(([key, label]) =>
      routeLink(`console/resources/${type}/${id}?view=${key}`, label, key === view ? { 'aria-current': 'page' } : {})));
  const title = `${type}: ${display(resource)}`;
  if (view === 'edit') {
    const [, status, form, backLink] = jsonEditor({ title, resource, save: (value) => fhir.update({ ...value, id }), back });
    return [h('h1', {}, title), tabs, status, form, backLink];
  }
  if (view === 'history') {
    const bundle = await fhir.history(type, id);
    const versions = (bundle.entry || []).map((e) => ({ resource: e.resource, request: e.request, response: e.response }));
    return [h('h1', {}, title), tabs, table([
      { label: 'Version', cell: (v) => v.resource?.meta?.versionId || v.response?.etag || '' },
      { label: 'When', cell: (v) => formatDate(v.resource?.meta?.lastUpdated || v.response?.lastModified) },
      { label: 'Change', cell: (v) => v.request?.method || (v.resource ? '' : 'DELETE') },
      { label: 'Content', cell: (v) => (v.resource ? h('details', {}, h('summary', {}, 'JSON'), h('pre', {}, JSON.stringify(v.resource, null, 2))) : 'deleted') },
    ], versions), back];
  }
  if (view === 'delete') {
    const area = h('div', {},
      notice(`Delete ${type}/${id}? Its history stays; reading it answers 410 Gone.`, 'bad'),
      button('Yes, delete', async () => {
        try {
          await fhir.remove(type, id);
          navigate(`console/resources?type=${encodeURIComponent(type)}`);
        } catch (e) {
          area.append(notice(e.message, 'bad'));
        }
      }, { class: 'danger' }),
      routeLink(`console/resources/${type}/${id}`, 'Cancel'));
    return [h('h1', {}, title), tabs, area];
  }
  return [h('h1', {}, title), tabs, h('pre', { 'aria-label': `${type} JSON`, tabindex: '0' }, JSON.stringify(resource, null, 2)), back];
}
