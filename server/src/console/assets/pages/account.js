// The signed-in user's own account: password, email, sessions, personal
// access tokens and the second factor. Every user sees this page.

import { api } from '../api.js';
import { button, clearErrors, copyText, definitions, field, formatDate, h, input, notice, showErrors, table } from '../dom.js';
import { context } from '../app.js';

function form(label, fields, submitLabel, submit) {
  const summary = h('div', {});
  const el = h('form', { 'aria-label': label }, ...fields, h('button', { type: 'submit' }, submitLabel));
  el.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(el);
    summary.replaceChildren();
    try {
      const message = await submit();
      summary.replaceChildren(notice(message, 'good'));
      el.reset();
    } catch (e) {
      showErrors(el, e, summary);
    }
  });
  return [summary, el];
}

export async function page() {
  const me = await api('auth/me');
  context.me = { ...context.me, ...me };
  const oldPassword = input('password', { autocomplete: 'current-password', required: true });
  const newPassword = input('password', { autocomplete: 'new-password', required: true });
  const email = input('email', { autocomplete: 'email', required: true });
  const emailPassword = input('password', { autocomplete: 'current-password', required: true });
  return [
    h('h1', {}, 'Your account'),
    definitions([
      ['Email', me.user?.email],
      ['Project', me.project?.name],
      ['Profile', me.membership?.profile?.reference],
      ['Admin', me.membership?.admin ? 'yes' : 'no'],
    ]),
    h('h2', {}, 'Change password'),
    ...form('Change password', [
      field('Current password', oldPassword, { name: 'oldPassword' }),
      field('New password', newPassword, { name: 'newPassword' }),
    ], 'Change password', async () => {
      const outcome = await api('auth/changepassword', { method: 'POST', body: { oldPassword: oldPassword.value, newPassword: newPassword.value } });
      return outcome.issue?.[0]?.diagnostics || 'Password changed.';
    }),
    h('h2', {}, 'Change email'),
    ...form('Change email', [
      field('New email', email, { name: 'email' }),
      field('Your password', emailPassword, { name: 'password' }),
    ], 'Change email', async () => {
      const outcome = await api('auth/changeemail', { method: 'POST', body: { email: email.value.trim(), password: emailPassword.value } });
      return outcome.issue?.[0]?.diagnostics || 'Check the new address for a verification link.';
    }),
    h('h2', {}, 'Sessions'),
    sessions(me.security?.sessions || []),
    h('h2', {}, 'Personal access tokens'),
    personalTokens(),
    h('h2', {}, 'Two-step sign-in'),
    await secondFactor(),
  ];
}

function sessions(list) {
  const area = h('div', {});
  area.append(table([
    { label: 'Signed in', cell: (s) => formatDate(s.authTime) },
    { label: 'How', cell: (s) => s.authMethod || '' },
    { label: 'From', cell: (s) => [s.remoteAddress, s.userAgent].filter(Boolean).join(' · ') },
    { label: '', cell: (s) => button('Revoke', async (event) => {
      try {
        await api('auth/revoke', { method: 'POST', body: { loginId: s.id } });
        event.target.replaceWith(h('span', {}, 'Revoked'));
      } catch (e) {
        area.append(notice(e.message, 'bad'));
      }
    }, { class: 'secondary', 'aria-label': `Revoke the session from ${formatDate(s.authTime)}` }) },
  ], list, 'Your sessions; revoking this one signs you out here'));
  return area;
}

function personalTokens() {
  const days = input('text', { value: '30', inputmode: 'numeric' });
  const result = h('div', { 'aria-live': 'polite' });
  const [summary, el] = form('New personal access token', [
    field('Lifetime in days', days, { name: 'lifetime' }),
  ], 'Create token', async () => {
    const token = await api('auth/tokens', { method: 'POST', body: { lifetime: Math.round(Number(days.value) * 86400) } });
    const status = h('span', { role: 'status', class: 'muted' });
    result.replaceChildren(h('div', { class: 'notice good' },
      h('p', {}, 'Your token, shown this once. It gives FHIR access as you, until it expires or you revoke it (it is listed under Sessions).'),
      h('p', {}, h('code', { class: 'secret' }, token.access_token)),
      button('Copy token', () => copyText(token.access_token, status), { class: 'secondary' }), status));
    return 'Token created.';
  });
  return h('div', {}, summary, el, result);
}

async function secondFactor() {
  const area = h('div', {});
  let status;
  try { status = await api('auth/mfa/status'); } catch (e) { return notice(e.message, 'bad'); }
  const code = input('text', { inputmode: 'numeric', autocomplete: 'one-time-code', required: true });
  if (status.enrolled) {
    const [summary, el] = form('Turn off two-step sign-in', [field('Code from your app', code, { name: 'token' })],
      'Turn off', async () => {
        await api('auth/mfa/disable', { method: 'POST', body: { token: code.value.trim() } });
        return 'Two-step sign-in is off.';
      });
    area.append(h('p', {}, 'Two-step sign-in is on.'), summary, el);
    return area;
  }
  const codes = h('div', { 'aria-live': 'polite' });
  const [summary, el] = form('Turn on two-step sign-in', [field('Code from your app', code, { name: 'token' })],
    'Turn on', async () => {
      const answer = await api('auth/mfa/enroll', { method: 'POST', body: { token: code.value.trim() } });
      codes.replaceChildren(h('p', {}, 'Your recovery codes, shown this once: each signs you in once without the app.'),
        h('ul', {}, (answer.recoveryCodes || []).map((c) => h('li', { class: 'secret' }, c))));
      return 'Two-step sign-in is on.';
    });
  area.append(
    h('p', {}, 'Scan this code with an authenticator app, then enter the six digits it shows.'),
    status.enrollQrCode ? h('img', { src: status.enrollQrCode, alt: 'QR code of your key', width: 200, height: 200 }) : null,
    definitions([['Key', (status.enrollUri || '').split('secret=')[1]?.split('&')[0]]]),
    summary, el, codes);
  return area;
}
