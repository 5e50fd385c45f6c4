// The project: its name and owner, its members counted by profile type;
// super admins also see every project and create new ones.

import { api, fhir } from '../api.js';
import { clearErrors, definitions, field, h, input, notice, showErrors } from '../dom.js';
import { context, isSuperAdmin, projectId, routeLink } from '../app.js';
import { refText, searchList } from './common.js';

const PROFILE_TYPES = ['Practitioner', 'RelatedPerson', 'Patient', 'ClientApplication', 'Bot'];

export async function page() {
  const id = projectId();
  const { project } = await api(`admin/projects/${id}`);
  const counts = await Promise.all(PROFILE_TYPES.map((type) =>
    api(`fhir/R4/ProjectMembership?project=Project/${id}&profile-type=${type}&_summary=count`)
      .then((b) => b.total ?? 0, () => '–')));
  const content = [
    h('h1', {}, project.name || 'Project'),
    definitions([
      ['Id', project.id],
      ['Owner', refText(project.owner)],
      ['Description', project.description],
      ['Signed in as', context.me.user?.email],
    ]),
    h('h2', {}, 'Members'),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Profile type'), h('th', { scope: 'col' }, 'Members'))),
      h('tbody', {}, PROFILE_TYPES.map((type, i) =>
        h('tr', {}, h('td', {}, type), h('td', { 'data-count': type }, String(counts[i]))))))),
    h('p', {}, routeLink('console/members', 'See the members'), ' · ', routeLink('console/invite', 'Invite someone')),
  ];
  if (isSuperAdmin()) content.push(...superAdminSection());
  return content;
}

function superAdminSection() {
  const list = searchList({
    path: 'fhir/R4/Project?_sort=name',
    searchParam: 'name',
    searchLabel: 'Find a project',
    columns: [
      { label: 'Name', cell: (p) => p.name || '' },
      { label: 'Id', cell: (p) => p.id },
      { label: 'Super admin', cell: (p) => (p.superAdmin ? 'yes' : '') },
    ],
  });
  return [h('h2', {}, 'All projects'), list, h('h2', {}, 'Create a new project'), createProject()];
}

// The guide's "Create a New Project", then "Invite a New User as an Admin".
function createProject() {
  const name = input('text', { required: true, autocomplete: 'off' });
  const description = input('text', { autocomplete: 'off' });
  const summary = h('div', {});
  const form = h('form', {},
    field('Project name', name, { name: 'name' }),
    field('Description', description, { name: 'description' }),
    h('button', { type: 'submit' }, 'Create project'));
  const wrap = h('div', {}, summary, form);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      const created = await fhir.create({ resourceType: 'Project', name: name.value.trim(), ...(description.value.trim() ? { description: description.value.trim() } : {}) });
      summary.replaceChildren(notice(`Created ${created.name} (${created.id}). Now invite its first admin.`, 'good'));
      form.replaceWith(inviteAdmin(created));
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  return wrap;
}

function inviteAdmin(project) {
  const first = input('text', { required: true, autocomplete: 'off' });
  const last = input('text', { required: true, autocomplete: 'off' });
  const email = input('email', { required: true, autocomplete: 'off' });
  const summary = h('div', {});
  const form = h('form', { 'aria-label': `Invite the first admin of ${project.name}` },
    h('h3', {}, `Invite the first admin of ${project.name}`),
    field('First name', first, { name: 'firstName' }),
    field('Last name', last, { name: 'lastName' }),
    field('Email', email, { name: 'email' }),
    h('button', { type: 'submit' }, 'Invite admin'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      const membership = await api(`admin/projects/${project.id}/invite`, {
        method: 'POST',
        body: {
          resourceType: 'Practitioner', firstName: first.value.trim(), lastName: last.value.trim(),
          email: email.value.trim(), sendEmail: true, membership: { admin: true },
        },
      });
      form.replaceWith(h('div', {}, notice(`Invited ${email.value.trim()} as admin of ${project.name}; the invitation email is on its way.`, 'good'),
        definitions([['Membership', membership.id], ['Profile', refText(membership.profile)], ['Admin', membership.admin ? 'yes' : 'no']])));
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  return h('div', {}, summary, form);
}
