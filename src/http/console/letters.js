// A list of stored messages with checkboxes (dead letters, the spool's dead
// letters): one row each, its message shown on demand, replay (optionally
// corrected) and discard for one or for the selected, each confirmed.
// Built for a thousand rows: one listener for the whole list, details
// rendered only when opened.

import { confirmAction, el, plural } from './dom.js';
import { bodyPreview, editMessage, messageView } from './message.js';

// `ui`: {list, all, count, replay, discard} elements; `describe(letter)`:
// the summary's cells; `act(kind, letters, patch)`: does the replay or
// discard and resolves when done (the list is then reloaded by the caller).
export function letterList(ui, { describe, act, noun = 'message' }) {
  let letters = [];

  const selected = () => [...ui.list.querySelectorAll('input.pick:checked')]
    .map((box) => letters[Number(box.dataset.index)]);

  const update = () => {
    const n = selected().length;
    ui.count.textContent = `${plural(letters.length, noun)} listed, ${n} selected`;
    ui.replay.disabled = n === 0;
    ui.discard.disabled = n === 0;
    ui.all.checked = n > 0 && n === letters.length;
    ui.all.indeterminate = n > 0 && n < letters.length;
  };

  const replay = async (chosen, patch) => {
    const what = chosen.length === 1 ? `${noun} ${chosen[0].id}` : plural(chosen.length, noun);
    const corrected = patch && Object.keys(patch).length ? ' corrected' : '';
    if (await confirmAction(`Replay${corrected} ${what}?`, 'Replay')) await act('replay', chosen, patch);
  };

  const discard = async (chosen) => {
    const what = chosen.length === 1 ? `${noun} ${chosen[0].id}` : plural(chosen.length, noun);
    if (await confirmAction(`Discard ${what} for good? This cannot be undone.`, 'Discard')) {
      await act('discard', chosen);
    }
  };

  ui.all.addEventListener('change', () => {
    for (const box of ui.list.querySelectorAll('input.pick')) box.checked = ui.all.checked;
    update();
  });
  ui.replay.addEventListener('click', () => replay(selected()));
  ui.discard.addEventListener('click', () => discard(selected()));
  ui.list.addEventListener('change', (event) => {
    if (event.target.matches('input.pick')) update();
  });
  ui.list.addEventListener('toggle', (event) => {
    const details = event.target;
    if (details.open && !details.dataset.shown) {
      details.dataset.shown = '1';
      details.append(messageView(letters[Number(details.dataset.index)].message));
    }
  }, true);
  ui.list.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-act]');
    if (!button) return;
    const letter = letters[Number(button.dataset.index)];
    if (button.dataset.act === 'discard') return discard([letter]);
    if (button.dataset.act === 'replay') return replay([letter]);
    const patch = await editMessage(`Correct ${noun} ${letter.id}`, letter.message, 'Replay corrected');
    if (patch) await replay([letter], patch);
  });

  return {
    render(next) {
      letters = next;
      const rows = document.createDocumentFragment();
      letters.forEach((letter, index) => {
        rows.append(el('li', { class: 'letter', dataset: { id: letter.id } },
          el('input', { type: 'checkbox', class: 'pick', 'aria-label': `select ${letter.id}`, dataset: { index } }),
          el('details', { dataset: { index } },
            el('summary', {}, ...describe(letter), el('span', { class: 'preview' }, bodyPreview(letter.message)))),
          el('span', { class: 'actions' },
            el('button', { type: 'button', dataset: { act: 'edit', index } }, 'Edit & replay'),
            el('button', { type: 'button', dataset: { act: 'replay', index } }, 'Replay'),
            el('button', { type: 'button', class: 'danger', dataset: { act: 'discard', index } }, 'Discard'))));
      });
      ui.list.replaceChildren(rows);
      if (!letters.length) ui.list.append(el('li', { class: 'muted empty' }, `No ${noun}s.`));
      update();
    },
  };
}
