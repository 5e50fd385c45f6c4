// Pages that need no sign-in: the sign-in start, and the pages the emails
// link to (set a password, verify an address, ask for a reset).

import { api, signIn } from '../api.js';
import { field, h, input, notice, showErrors, clearErrors } from '../dom.js';
import { routeLink } from '../app.js';

export function signInPage({ query }) {
  const project = query.get('project') || '';
  const projectInput = input('text', { autocomplete: 'off', value: project, spellcheck: 'false' });
  const form = h('form', {},
    h('details', { open: !!project },
      h('summary', {}, 'Signing in to one project’s own account (a patient’s)?'),
      field('Project id', projectInput, { hint: 'The link in your invitation fills this in.' })),
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    signIn({ project: projectInput.value.trim() || null, returnTo: 'console/' });
  });
  return [
    h('h1', {}, 'fhirgate console'),
    query.get('signedout') ? notice('You are signed out.', 'good') : null,
    h('p', {}, 'Sign in with your email and password on fhirgate’s sign-in page.'),
    form,
    h('p', {}, routeLink('console/resetpassword', 'Forgot your password?')),
  ];
}

export function resetPassword({ query }) {
  const email = input('email', { autocomplete: 'email', required: true });
  const project = input('text', { value: query.get('project') || '', autocomplete: 'off' });
  const summary = h('div', {});
  const form = h('form', {},
    field('Email', email, { name: 'email' }),
    h('details', {}, h('summary', {}, 'An account of one project only (a patient’s)?'),
      field('Project id', project, { name: 'projectId' })),
    h('button', { type: 'submit' }, 'Send a reset link'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = { email: email.value.trim() };
    if (project.value.trim()) body.projectId = project.value.trim();
    try {
      const outcome = await api('auth/resetpassword', { method: 'POST', body, anonymous: true });
      summary.replaceChildren(notice(outcome.issue?.[0]?.diagnostics || 'Check your email.', 'good'));
    } catch (e) {
      showErrors(form, e, summary);
    }
  });
  return [h('h1', {}, 'Reset your password'), summary, form];
}

export function setPassword({ params, query }) {
  const password = input('password', { autocomplete: 'new-password', required: true, minlength: 8 });
  const confirm = input('password', { autocomplete: 'new-password', required: true });
  const summary = h('div', {});
  const project = query.get('project');
  const form = h('form', {},
    field('New password', password, { name: 'password', hint: 'At least 8 characters; not a common or easily guessed password.' }),
    field('Repeat the password', confirm, { name: 'confirm' }),
    h('button', { type: 'submit' }, 'Set password'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (password.value !== confirm.value) {
      showErrors(form, { issues: [{ expression: ['confirm'], diagnostics: 'The two passwords differ' }] }, summary);
      return;
    }
    try {
      await api('auth/setpassword', {
        method: 'POST',
        anonymous: true,
        body: { id: params.id, secret: params.secret, password: password.value },
      });
      const signInButton = h('button', { type: 'button', onClick: () => signIn({ project: project || null, returnTo: 'console/' }) }, 'Sign in');
      form.replaceWith(h('div', {}, notice('Your password is set.', 'good'), signInButton));
      summary.replaceChildren();
      signInButton.focus();
    } catch (e) {
      showErrors(form, e, summary);
      if (/link/i.test(e.message)) {
        summary.append(h('p', {}, routeLink('console/resetpassword', 'Ask for a new link')));
      }
    }
  });
  return [h('h1', {}, 'Choose your password'), summary, form];
}

export async function verifyEmail({ params }) {
  try {
    await api('auth/verifyemail', { method: 'POST', anonymous: true, body: { id: params.id, secret: params.secret } });
    return [h('h1', {}, 'Email address verified'), notice('Thank you: your address is confirmed.', 'good'),
      h('button', { type: 'button', onClick: () => signIn({ returnTo: 'console/account' }) }, 'Sign in')];
  } catch (e) {
    return [h('h1', {}, 'This link did not work'), notice(e.message, 'bad'),
      h('p', {}, 'Sign in and ask for a new verification email from your account page.')];
  }
}
