// AccessPolicies: list, create, and edit the JSON with the server's
// validation errors shown next to the editor.

import { fhir } from '../api.js';
import { field, h, notice } from '../dom.js';
import { navigate, routeLink } from '../app.js';
import { searchList } from './common.js';

export function page() {
  return [
    h('h1', {}, 'Access policies'),
    searchList({
      path: 'fhir/R4/AccessPolicy?_sort=name',
      searchParam: 'name',
      searchLabel: 'Policy name',
      columns: [
        { label: 'Name', cell: (p) => routeLink(`console/policies/${p.id}`, p.name || p.id) },
        { label: 'Resource types', cell: (p) => (p.resource || []).map((r) => r.resourceType).join(', ') },
        { label: 'Updated', cell: (p) => p.meta?.lastUpdated || '' },
      ],
    }),
    h('p', {}, routeLink('console/policies/new', 'New access policy', { class: 'button' })),
  ];
}

const TEMPLATE = {
  resourceType: 'AccessPolicy',
  name: 'New policy',
  resource: [{ resourceType: 'Patient', readonly: true }],
};

export async function edit({ params }) {
  const isNew = params.id === 'new';
  const policy = isNew ? TEMPLATE : await fhir.read('AccessPolicy', params.id);
  return jsonEditor({
    title: isNew ? 'New access policy' : `Access policy: ${policy.name || policy.id}`,
    resource: policy,
    save: async (value) => {
      if (isNew) {
        const created = await fhir.create(value);
        navigate(`console/policies/${created.id}`, { replace: true });
        return created;
      }
      return fhir.update({ ...value, id: params.id });
    },
    back: routeLink('console/policies', 'All access policies'),
  });
}

// A JSON editor for one resource: parse errors and the server's issues
// (with the element each names) are listed under it.
export function jsonEditor({ title, resource, save, back }) {
  const text = h('textarea', { spellcheck: 'false', rows: 20 }, JSON.stringify(resource, null, 2));
  const errors = h('ul', { class: 'field-error', id: 'json-errors', role: 'alert' });
  const status = h('div', { 'aria-live': 'polite' });
  text.setAttribute('aria-describedby', 'json-errors');
  const form = h('form', { 'aria-label': title },
    field('Resource JSON', text),
    errors,
    h('button', { type: 'submit' }, 'Save'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    errors.replaceChildren();
    status.replaceChildren();
    text.removeAttribute('aria-invalid');
    let value;
    try {
      value = JSON.parse(text.value);
    } catch (e) {
      errors.replaceChildren(h('li', {}, `Not valid JSON: ${e.message}`));
      text.setAttribute('aria-invalid', 'true');
      text.focus();
      return;
    }
    try {
      const saved = await save(value);
      if (saved) text.value = JSON.stringify(saved, null, 2);
      status.replaceChildren(notice('Saved.', 'good'));
    } catch (e) {
      const issues = e.issues?.length ? e.issues : [{ diagnostics: e.message }];
      errors.replaceChildren(...issues.map((i) =>
        h('li', {}, [(i.expression || []).join(', '), i.diagnostics || i.details?.text || i.code].filter(Boolean).join(': '))));
      text.setAttribute('aria-invalid', 'true');
      text.focus();
    }
  });
  return [h('h1', {}, title), status, form, back ? h('p', {}, back) : null];
}
