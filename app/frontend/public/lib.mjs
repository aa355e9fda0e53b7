// Pure helpers used by the UI (no DOM access, unit-tested with node --test).

export const STATUSES = Object.freeze(['todo', 'doing', 'done']);
export const STATUS_LABELS = Object.freeze({ todo: 'To do', doing: 'Doing', done: 'Done' });
export const BOARD_NAME_MAX = 100;
export const ITEM_TITLE_MAX = 200;

function validateText(value, label, max) {
  if (typeof value !== 'string') return { ok: false, error: `${label} is required` };
  const text = value.trim();
  if (text.length === 0) return { ok: false, error: `${label} is required` };
  if (text.length > max) return { ok: false, error: `${label} must be at most ${max} characters` };
  return { ok: true, value: text };
}

/** Validate an item title the same way the API does (trimmed, 1..200 chars). */
export function validateTitle(value) {
  return validateText(value, 'Title', ITEM_TITLE_MAX);
}

/** Validate a board name (trimmed, 1..100 chars). */
export function validateBoardName(value) {
  return validateText(value, 'Board name', BOARD_NAME_MAX);
}

export function isStatus(value) {
  return STATUSES.includes(value);
}

/** Group items into {todo: [], doing: [], done: []}, keeping API order; unknown statuses go to todo. */
export function groupItemsByStatus(items) {
  const groups = { todo: [], doing: [], done: [] };
  for (const item of items || []) {
    groups[isStatus(item.status) ? item.status : 'todo'].push(item);
  }
  return groups;
}

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]);
}

function id(value) {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new TypeError(`invalid id: ${value}`);
  return n;
}

/** Same-origin API paths (the router sends /api to the backend). */
export const apiPath = Object.freeze({
  boards: () => '/api/boards',
  board: (boardId) => `/api/boards/${id(boardId)}`,
  boardItems: (boardId) => `/api/boards/${id(boardId)}/items`,
  item: (itemId) => `/api/items/${id(itemId)}`,
});

/** Client-side routes: "/" (board list) and "/boards/:id". */
export function parseRoute(pathname) {
  const match = /^\/boards\/(\d+)\/?$/.exec(pathname || '/');
  if (match) return { view: 'board', boardId: Number(match[1]) };
  return { view: 'boards' };
}

export function boardHref(boardId) {
  return `/boards/${id(boardId)}`;
}

/** Turn a failed API response (status + parsed body or null) into a user-facing message. */
export function apiErrorMessage(status, body) {
  if (body && typeof body.error === 'string' && body.error) return body.error;
  if (status === 0) return 'Network error: the API is unreachable';
  if (status === 413) return 'Request too large';
  if (status >= 500) return `Server error (${status})`;
  return `Request failed (${status})`;
}

/** Count items per status, e.g. for column headers. */
export function countByStatus(items) {
  const groups = groupItemsByStatus(items);
  return Object.fromEntries(STATUSES.map((s) => [s, groups[s].length]));
}
