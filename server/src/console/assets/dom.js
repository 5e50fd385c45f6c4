// DOM helpers. Every value from data becomes a text node or an attribute
// value through the DOM API: nothing is ever parsed as HTML.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'value') el.value = value;
    else if (key === 'checked') el.checked = true;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let ids = 0;
export function uid(prefix) {
  ids += 1;
  return `${prefix}-${ids}`;
}

// A labelled control with a slot for its error. `name` is the field the
// API's OperationOutcome names in `expression`.
export function field(label, control, { name, hint } = {}) {
  const id = control.id || uid('f');
  control.id = id;
  if (name) control.name = name;
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  const described = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(' ');
  control.setAttribute('aria-describedby', described);
  return h('div', { class: 'field', 'data-field': name || '' },
    h('label', { for: id }, label),
    hint ? h('p', { class: 'muted', id: `${id}-hint` }, hint) : null,
    control,
    error);
}

export function checkbox(label, { name, checked } = {}) {
  const id = uid('c');
  return h('div', { class: 'field', 'data-field': name || '' },
    h('label', { class: 'inline', for: id },
      h('input', { type: 'checkbox', id, name, checked: !!checked }), label),
    h('p', { class: 'field-error', id: `${id}-error`, hidden: true }));
}

export function input(type, props = {}) {
  return h('input', { type, ...props });
}

export function select(options, props = {}) {
  return h('select', props, options.map(([value, label]) =>
    h('option', { value, selected: props.value === value }, label)));
}

export function button(label, onClick, props = {}) {
  return h('button', { type: 'button', onClick, ...props }, label);
}

export function notice(text, kind = '') {
  return h('div', { class: `notice ${kind}`, role: kind === 'bad' ? 'alert' : 'status' }, text);
}

export function table(columns, rows, caption) {
  if (!rows.length) return h('p', { class: 'muted empty' }, 'Nothing here yet.');
  return h('div', { class: 'table-wrap' }, h('table', {},
    caption ? h('caption', { class: 'muted' }, caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
    h('tbody', {}, rows.map((row) => h('tr', {}, columns.map((c) => h('td', {}, c.cell(row))))))));
}

export function definitions(pairs) {
  return h('dl', {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// Shows an API error: each issue next to the field its `expression` names,
// the rest above the form.
export function showErrors(form, error, summary) {
  clearErrors(form);
  const general = [];
  for (const issue of error.issues || []) {
    const expr = (issue.expression || [])[0] || '';
    const target = fieldFor(form, expr);
    const message = issue.diagnostics || issue.details?.text || issue.code || 'Invalid';
    if (target) {
      const slot = target.querySelector('.field-error');
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
      const control = target.querySelector('input,select,textarea');
      if (control) control.setAttribute('aria-invalid', 'true');
    } else {
      general.push(expr ? `${expr}: ${message}` : message);
    }
  }
  if (!error.issues?.length) general.push(error.message);
  if (summary) {
    summary.replaceChildren(...(general.length ? [notice(general.join(' '), 'bad')] : []));
  }
  const first = form.querySelector('[aria-invalid=true]');
  if (first) first.focus();
}

function fieldFor(form, expression) {
  if (!expression) return null;
  const fields = [...form.querySelectorAll('[data-field]')].filter((f) => f.dataset.field);
  // The field named exactly, else the one whose name the expression starts with.
  return fields.find((f) => f.dataset.field === expression)
    || fields.find((f) => expression.split(/[.[]/).includes(f.dataset.field))
    || fields.find((f) => f.dataset.field === '*') || null;
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll('.field-error')) {
    slot.hidden = true;
    slot.textContent = '';
  }
  for (const c of form.querySelectorAll('[aria-invalid]')) c.removeAttribute('aria-invalid');
}

export function formatDate(value) {
  if (!value) return '';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

export async function copyText(text, statusEl) {
  try {
    await navigator.clipboard.writeText(text);
    statusEl.textContent = 'Copied';
  } catch {
    statusEl.textContent = 'Select the text and copy it';
  }
}
