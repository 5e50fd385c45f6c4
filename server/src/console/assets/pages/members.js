// Members in tabs (Users, Patients, Clients, Bots), and one member's detail:
// promote to admin, access policies with parameters, end date, remove.

import { api, display, email, fhir } from '../api.js';
import { button, checkbox, clearErrors, definitions, field, h, input, notice, showErrors } from '../dom.js';
import { navigate, projectId, routeLink } from '../app.js';
import { refText, searchList } from './common.js';

const TABS = [
  ['users', 'Users', 'Practitioner,RelatedPerson'],
  ['patients', 'Patients', 'Patient'],
  ['clients', 'Clients', 'ClientApplication'],
  ['bots', 'Bots', 'Bot'],
];

export function page({ query }) {
  const current = TABS.find(([key]) => key === query.get('tab')) || TABS[0];
  const [, label, types] = current;
  const tabs = h('div', { class: 'tabs', role: 'navigation', 'aria-label': 'Member types' },
    TABS.map(([key, text]) => routeLink(`console/members?tab=${key}`, text, key === current[0] ? { 'aria-current': 'page' } : {})));
  const list = searchList({
    path: `fhir/R4/ProjectMembership?project=Project/${projectId()}&profile-type=${types}&_include=ProjectMembership:profile&_sort=-_lastUpdated`,
    searchParam: types.includes(',') ? null : `profile:${types}.name`,
    searchLabel: 'Name',
    caption: `${label} of this project`,
    entries: pairWithProfiles,
    columns: [
      { label: 'Name', cell: ({ membership, profile }) => routeLink(`console/members/${membership.id}`, profile ? display(profile) : refText(membership.profile)) },
      { label: 'Email', cell: ({ profile }) => email(profile) },
      { label: 'Admin', cell: ({ membership }) => (membership.admin ? 'Admin' : '') },
      { label: 'Access policies', cell: ({ membership }) => policiesOf(membership).join(', ') },
      { label: 'Ends', cell: ({ membership }) => membership.endDate || '' },
    ],
  });
  return [h('h1', {}, 'Members'), tabs, list,
    h('p', {}, routeLink('console/invite', 'Invite a user or patient'))];
}

function pairWithProfiles(bundle) {
  const entries = bundle.entry || [];
  const profiles = new Map(entries.filter((e) => e.search?.mode === 'include')
    .map((e) => [`${e.resource.resourceType}/${e.resource.id}`, e.resource]));
  return entries.filter((e) => e.search?.mode !== 'include').map((e) => ({
    membership: e.resource,
    profile: profiles.get(e.resource.profile?.reference),
  }));
}

function policiesOf(membership) {
  const refs = [];
  if (membership.accessPolicy) refs.push(refText(membership.accessPolicy));
  for (const a of membership.access || []) refs.push(refText(a.policy));
  return refs;
}

export async function detail({ params }) {
  const base = `admin/projects/${projectId()}/members/${params.id}`;
  let membership = await api(base);
  const [type, id] = (membership.profile?.reference || '/').split('/');
  const profile = await fhir.read(type, id).catch(() => null);
  const policies = await allPolicies();
  const summary = h('div', {});
  const admin = checkbox('Admin of this project (promote to admin)', { name: 'admin', checked: membership.admin === true });
  const access = accessEditor(policies, membership);
  const endDate = input('date', { value: (membership.endDate || '').slice(0, 10) });
  const form = h('form', { 'aria-label': 'Membership' },
    admin,
    access.element,
    field('End date', endDate, { name: 'endDate', hint: 'After this day the membership’s tokens stop working.' }),
    h('button', { type: 'submit' }, 'Save'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const changed = { ...membership, admin: admin.querySelector('input').checked };
    delete changed.accessPolicy;
    const entries = access.value();
    if (entries.length) changed.access = entries; else delete changed.access;
    if (endDate.value) changed.endDate = endDate.value; else delete changed.endDate;
    try {
      membership = await api(base, { method: 'POST', body: changed });
      summary.replaceChildren(notice('Saved.', 'good'));
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  const removeArea = h('div', {});
  const removeButton = button('Remove from project', () => {
    removeArea.replaceChildren(
      notice(`Remove ${profile ? display(profile) : 'this member'} from the project? Their sign-ins end; the ${type} resource stays.`, 'bad'),
      button('Yes, remove', async () => {
        try {
          await api(base, { method: 'DELETE' });
          navigate('console/members');
        } catch (e) {
          removeArea.replaceChildren(notice(e.message, 'bad'));
        }
      }, { class: 'danger' }),
      button('Cancel', () => { removeArea.replaceChildren(removeButton); removeButton.focus(); }, { class: 'secondary' }),
    );
    removeArea.querySelector('button').focus();
  }, { class: 'danger' });
  removeArea.append(removeButton);
  return [
    h('h1', {}, profile ? display(profile) : 'Member'),
    definitions([
      ['Profile', `${type}/${id}`],
      ['Email', email(profile)],
      ['User', refText(membership.user)],
      ['Membership', membership.id],
    ]),
    summary, form,
    h('h2', {}, 'Remove'), removeArea,
    h('p', {}, routeLink(`console/resources/${type}/${id}`, 'Open the profile resource')),
  ];
}

export async function allPolicies() {
  const bundle = await fhir.search('AccessPolicy', '_count=100&_sort=name');
  return (bundle.entry || []).map((e) => e.resource);
}

// Access entries: a policy with its parameters (`name=value` per line;
// a value like `Patient/123` is a reference, anything else a string).
export function accessEditor(policies, membership = {}) {
  const rows = h('div', {});
  const entries = [...(membership.access || [])];
  if (membership.accessPolicy) entries.unshift({ policy: membership.accessPolicy });
  const add = (entry = {}) => {
    const select = h('select', {},
      h('option', { value: '' }, '(none)'),
      policies.map((p) => h('option', { value: `AccessPolicy/${p.id}`, selected: entry.policy?.reference === `AccessPolicy/${p.id}` }, p.name || p.id)));
    const parameters = h('textarea', { rows: 2, class: 'parameters' },
      (entry.parameter || []).map((p) => `${p.name}=${p.valueReference?.reference ?? p.valueString ?? ''}`).join('\n'));
    rows.append(h('fieldset', {}, h('legend', {}, 'Access policy'),
      field('Policy', select),
      field('Parameters (one name=value per line)', parameters, { hint: 'For example patient=Patient/123' })));
  };
  if (entries.length) entries.forEach(add); else add();
  const element = h('div', { 'data-field': 'access' }, rows,
    button('Add another policy', () => add(), { class: 'secondary' }),
    h('p', { class: 'field-error', hidden: true }));
  return {
    element,
    value: () => [...rows.querySelectorAll('fieldset')].map((set) => {
      const policy = set.querySelector('select').value;
      if (!policy) return null;
      const parameter = set.querySelector('textarea').value.split('\n').map((line) => line.trim()).filter(Boolean)
        .map((line) => {
          const [name, ...rest] = line.split('=');
          const value = rest.join('=').trim();
          return /^[A-Z][A-Za-z]+\/[^/\s]+$/.test(value)
            ? { name: name.trim(), valueReference: { reference: value } }
            : { name: name.trim(), valueString: value };
        });
      return parameter.length ? { policy: { reference: policy }, parameter } : { policy: { reference: policy } };
    }).filter(Boolean),
  };
}
