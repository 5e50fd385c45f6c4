// A searchable, paged list over a FHIR search: the search box adds a
// parameter, the pager follows the Bundle's next and previous links.

import { api, link } from '../api.js';
import { field, h, input, notice, table } from '../dom.js';

export function searchList({ path, columns, searchParam, searchLabel, caption, count = 20, entries }) {
  const region = h('div', { 'aria-live': 'polite' });
  const status = h('p', { class: 'muted', role: 'status' });
  const prev = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Next page');
  let links = {};
  const pick = entries || ((bundle) => (bundle.entry || []).filter((e) => e.search?.mode !== 'include').map((e) => e.resource));

  async function load(target) {
    status.textContent = 'Loading…';
    try {
      const bundle = await api(target);
      const rows = pick(bundle);
      region.replaceChildren(table(columns, rows, caption));
      links = { next: link(bundle, 'next'), previous: link(bundle, 'previous') };
      next.disabled = !links.next;
      prev.disabled = !links.previous;
      status.textContent = rows.length ? `${rows.length} shown${bundle.total !== undefined ? ` of ${bundle.total}` : ''}` : '';
    } catch (e) {
      status.textContent = '';
      region.replaceChildren(notice(e.message, 'bad'));
    }
  }
  function first(term) {
    const sep = path.includes('?') ? '&' : '?';
    const query = term && searchParam ? `&${searchParam}=${encodeURIComponent(term)}` : '';
    return `${path}${sep}_count=${count}${query}`;
  }
  prev.addEventListener('click', () => links.previous && load(links.previous));
  next.addEventListener('click', () => links.next && load(links.next));
  let form = null;
  if (searchParam) {
    const box = input('search', { autocomplete: 'off' });
    form = h('form', { role: 'search', class: 'row' },
      field(searchLabel || 'Search', box),
      h('button', { type: 'submit' }, 'Search'));
    form.addEventListener('submit', (event) => { event.preventDefault(); load(first(box.value.trim())); });
  }
  load(first(''));
  return h('div', { class: 'list' }, form, status, region, h('div', { class: 'pager' }, prev, next));
}

// The reference's display, else the reference itself.
export function refText(reference) {
  return reference?.display || reference?.reference || '';
}
