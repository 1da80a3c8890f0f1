// Small DOM helpers. Data from Warren only ever reaches the page as text
// (textContent, attribute values set one by one), never as markup.

export const $ = (id) => document.getElementById(id);

// An element: el('td', {class: 'num', title: t}, child, 'text', ...).
// Strings become text nodes; null and undefined are skipped.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Shows a problem (or any error) in the banner at the top.
export function notify(title, detail, kind = 'error') {
  const box = $('notice');
  box.dataset.kind = kind;
  $('notice-title').textContent = title;
  $('notice-detail').textContent = detail || '';
  box.hidden = false;
}

export function clearNotice() {
  $('notice').hidden = true;
}

// Shows an error thrown by api(): its problem's title and detail.
export function showError(e) {
  if (e && e.problem) notify(e.problem.title || `HTTP ${e.status}`, e.problem.detail || '');
  else notify('Error', String(e && e.message ? e.message : e));
}

// Opens `dialog` and resolves with the value of the button that closed it
// ('cancel' for Escape). Buttons carry their value; Enter in an input
// presses the button marked `data-default`.
export function ask(dialog) {
  return new Promise((resolve) => {
    const buttons = [...dialog.querySelectorAll('button[value]')];
    const done = (value) => {
      for (const b of buttons) b.removeEventListener('click', onClick);
      dialog.removeEventListener('cancel', onCancel);
      dialog.removeEventListener('keydown', onKey);
      if (dialog.open) dialog.close(value);
      resolve(value);
    };
    const onClick = (event) => done(event.currentTarget.value);
    const onCancel = (event) => { event.preventDefault(); done('cancel'); };
    const onKey = (event) => {
      if (event.key === 'Enter' && event.target.tagName === 'INPUT') {
        event.preventDefault();
        done(dialog.querySelector('button[data-default]')?.value || 'ok');
      }
    };
    for (const b of buttons) b.addEventListener('click', onClick);
    dialog.addEventListener('cancel', onCancel);
    dialog.addEventListener('keydown', onKey);
    dialog.showModal();
  });
}

// Asks the operator to confirm a destructive action, in the page.
export async function confirmAction(text, action = 'Confirm') {
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = action;
  return (await ask($('confirm-dialog'))) === 'ok';
}

// "3 messages", "1 message".
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// Marks what a page has just shown (`body[data-loaded]`, and a performance
// mark once the browser has laid it out and is free again): what tests and
// measurements wait for.
export function loaded(what) {
  document.body.dataset.loaded = what;
  requestAnimationFrame(() => setTimeout(() => performance.mark(`console:${what}`), 0));
}
