// Sign-in for servers that have tokens: the first API answer of 401 shows a small form that
// trades a token for the `aura_session` cookie (POST /api/session), then reloads the page so
// every fetch and EventSource starts again with the cookie (EventSource sends it by itself on
// the same origin). With no tokens configured the API never answers 401 and this stays hidden.
// The token goes to the server once and is never stored by the page.

import { el } from './format.js';

let shown = false;

function showSignIn() {
  if (shown) return;
  shown = true;
  const input = el('input', { id: 'sign-in-token', name: 'token', type: 'password', autocomplete: 'current-password', required: '' });
  const message = el('p', { class: 'field-error', id: 'sign-in-error', role: 'alert' });
  message.hidden = true;
  const form = el('form', { id: 'sign-in', class: 'sign-in', 'aria-labelledby': 'sign-in-title' },
    el('h2', { id: 'sign-in-title' }, 'Sign in'),
    el('p', { class: 'muted' }, 'This Aura server needs a token (aura token create NAME).'),
    el('div', { class: 'field' }, el('label', { for: 'sign-in-token' }, 'Token'), input),
    message,
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'sign-in-submit' }, 'Sign in')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.hidden = true;
    const res = await nativeFetch('/api/session', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: input.value.trim() }),
    });
    if (res.status === 204) {
      location.reload();
    } else {
      message.textContent = res.status === 401 ? 'That token is not valid.' : `The server answered ${res.status}.`;
      message.hidden = false;
    }
  });
  const main = document.querySelector('main') ?? document.body;
  main.prepend(form);
  input.focus();
}

const nativeFetch = window.fetch.bind(window);

/** Every page's fetches go through here: a 401 from the API asks the user to sign in. */
window.fetch = async (input, init) => {
  const res = await nativeFetch(input, init);
  const url = new URL(input instanceof Request ? input.url : String(input), location.href);
  if (res.status === 401 && url.origin === location.origin && url.pathname.startsWith('/api/')) {
    showSignIn();
  }
  return res;
};
