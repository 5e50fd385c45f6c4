// Invite a Practitioner, Patient or RelatedPerson: the guide's Invite page.

import { api } from '../api.js';
import { checkbox, clearErrors, definitions, field, h, input, notice, select, showErrors } from '../dom.js';
import { isSuperAdmin, projectId, routeLink } from '../app.js';
import { accessEditor, allPolicies } from './members.js';
import { refText } from './common.js';

export async function page() {
  const policies = await allPolicies();
  const type = select([['Practitioner', 'Practitioner'], ['Patient', 'Patient'], ['RelatedPerson', 'RelatedPerson']]);
  const first = input('text', { required: true, autocomplete: 'off' });
  const last = input('text', { required: true, autocomplete: 'off' });
  const email = input('email', { required: true, autocomplete: 'off' });
  const admin = checkbox('Admin of this project', { name: 'admin' });
  const access = accessEditor(policies);
  const scope = select([['', 'As the server decides'], ['project', 'This project only'], ['server', 'The whole server']]);
  const send = checkbox('Send the invitation email', { name: 'sendEmail', checked: true });
  const summary = h('div', {});
  const result = h('div', { 'aria-live': 'polite' });
  const form = h('form', { 'aria-label': 'Invite' },
    field('Profile type', type, { name: 'resourceType' }),
    field('First name', first, { name: 'firstName' }),
    field('Last name', last, { name: 'lastName' }),
    field('Email', email, { name: 'email' }),
    admin,
    access.element,
    isSuperAdmin() ? field('Account scope', scope, { name: 'scope', hint: 'A patient’s account always belongs to this project.' }) : null,
    send,
    h('button', { type: 'submit' }, 'Invite'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    summary.replaceChildren();
    const entries = access.value();
    const body = {
      resourceType: type.value,
      firstName: first.value.trim(),
      lastName: last.value.trim(),
      email: email.value.trim(),
      sendEmail: send.querySelector('input').checked,
      membership: { admin: admin.querySelector('input').checked, ...(entries.length ? { access: entries } : {}) },
    };
    if (isSuperAdmin() && scope.value) body.scope = scope.value;
    try {
      const membership = await api(`admin/projects/${projectId()}/invite`, { method: 'POST', body });
      result.replaceChildren(
        notice(`Invited ${body.email}.${body.sendEmail ? ' The invitation email is on its way.' : ''}`, 'good'),
        definitions([
          ['Membership', routeLink(`console/members/${membership.id}`, membership.id)],
          ['Profile', refText(membership.profile)],
          ['User', refText(membership.user)],
          ['Admin', membership.admin ? 'yes' : 'no'],
        ]));
      form.reset();
      result.querySelector('a')?.focus();
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  return [h('h1', {}, 'Invite'), summary, form, result];
}
