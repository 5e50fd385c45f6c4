// The project's lifecycle AuditEvents, newest first, filterable by type.

import { refText, searchList } from './common.js';
import { formatDate, h, select, field } from '../dom.js';
import { navigate } from '../app.js';

const SYSTEM = 'https://fhirgate.dev/fhir/CodeSystem/lifecycle';
const CODES = ['user-created', 'user-deleted', 'user-invited', 'membership-added', 'membership-removed',
  'membership-changed', 'patient-enlisted', 'patient-unenlisted', 'password-changed', 'password-reset',
  'email-verified', 'login-succeeded', 'login-failed', 'login-locked', 'token-revoked',
  'mfa-enrolled', 'mfa-disabled'];

export function page({ query }) {
  const code = query.get('type') || '';
  const filter = select([['', 'All lifecycle events'], ...CODES.map((c) => [c, c])], { value: code });
  filter.addEventListener('change', () => navigate(`console/audit${filter.value ? `?type=${filter.value}` : ''}`));
  const subtype = code ? `${SYSTEM}|${code}` : `${SYSTEM}|`;
  return [
    h('h1', {}, 'Audit'),
    h('form', { class: 'row', role: 'search' }, field('Event type', filter)),
    searchList({
      path: `fhir/R4/AuditEvent?_sort=-_lastUpdated&subtype=${encodeURIComponent(subtype)}`,
      columns: [
        { label: 'When', cell: (e) => formatDate(e.recorded || e.meta?.lastUpdated) },
        { label: 'Event', cell: (e) => (e.subtype || []).find((s) => s.system === SYSTEM)?.code || '' },
        { label: 'Who', cell: (e) => (e.agent || []).map((a) => refText(a.who)).join(', ') },
        { label: 'What', cell: (e) => (e.entity || []).map((x) => refText(x.what)).join(', ') },
        { label: 'Outcome', cell: (e) => e.outcomeDesc || e.outcome || '' },
      ],
    }),
  ];
}
