// Sunday UI: vanilla ES module, no build step. All state lives in the API.
import {
  STATUSES, STATUS_LABELS, apiErrorMessage, apiPath, boardHref, countByStatus,
  escapeHtml, groupItemsByStatus, parseRoute, validateBoardName, validateTitle,
} from './lib.mjs';

const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);

class ApiError extends Error {}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(apiErrorMessage(0, null));
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw new ApiError(apiErrorMessage(response.status, data));
  return data;
}

function showError(message) {
  const el = $('error');
  el.textContent = message || '';
  el.hidden = !message;
}

async function guarded(fn) {
  try {
    showError('');
    await fn();
  } catch (err) {
    showError(err instanceof ApiError ? err.message : `Unexpected error: ${err.message}`);
  }
}

function navigate(href) {
  history.pushState(null, '', href);
  return render();
}

// ---- board list ----
async function renderBoards() {
  $('board-view').hidden = true;
  $('boards-view').hidden = false;
  document.title = 'Sunday';
  const { boards } = await api('GET', apiPath.boards());
  $('boards-empty').hidden = boards.length > 0;
  $('board-list').innerHTML = boards.map((b) => `
    <li class="board-card" data-testid="board-card" data-board-id="${b.id}">
      <a href="${boardHref(b.id)}" data-testid="board-link">${escapeHtml(b.name)}</a>
      <button type="button" class="danger small" data-testid="board-delete" data-board-id="${b.id}"
        aria-label="Delete board ${escapeHtml(b.name)}">Delete</button>
    </li>`).join('');
}

// ---- single board ----
let currentBoard = null;

function itemRow(item) {
  const li = document.createElement('li');
  li.className = 'item';
  li.dataset.testid = 'item-row';
  li.dataset.itemId = String(item.id);
  li.innerHTML = `
    <span class="item-title" data-testid="item-title">${escapeHtml(item.title)}</span>
    <input class="item-edit-input" data-testid="item-edit-input" maxlength="200" hidden aria-label="Edit title">
    <div class="item-actions">
      <select data-testid="item-status" aria-label="Status">
        ${STATUSES.map((s) => `<option value="${s}"${s === item.status ? ' selected' : ''}>${STATUS_LABELS[s]}</option>`).join('')}
      </select>
      <button type="button" class="small" data-testid="item-edit">Edit</button>
      <button type="button" class="small" data-testid="item-save" hidden>Save</button>
      <button type="button" class="danger small" data-testid="item-delete">Delete</button>
    </div>`;
  const title = $('item-title', li);
  const input = $('item-edit-input', li);
  const editBtn = $('item-edit', li);
  const saveBtn = $('item-save', li);

  const setEditing = (on) => {
    title.hidden = on; input.hidden = !on; editBtn.hidden = on; saveBtn.hidden = !on;
    if (on) { input.value = item.title; input.focus(); input.select(); }
  };
  const save = () => guarded(async () => {
    const check = validateTitle(input.value);
    if (!check.ok) throw new ApiError(check.error);
    await api('PATCH', apiPath.item(item.id), { title: check.value });
    await renderBoard(currentBoard.id);
  });
  editBtn.addEventListener('click', () => setEditing(true));
  saveBtn.addEventListener('click', save);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); save(); }
    if (e.key === 'Escape') setEditing(false);
  });
  $('item-status', li).addEventListener('change', (e) => guarded(async () => {
    await api('PATCH', apiPath.item(item.id), { status: e.target.value });
    await renderBoard(currentBoard.id);
  }));
  $('item-delete', li).addEventListener('click', () => guarded(async () => {
    await api('DELETE', apiPath.item(item.id));
    await renderBoard(currentBoard.id);
  }));
  return li;
}

async function renderBoard(boardId) {
  $('boards-view').hidden = true;
  $('board-view').hidden = false;
  const board = await api('GET', apiPath.board(boardId));
  currentBoard = board;
  document.title = `${board.name} · Sunday`;
  $('board-title').textContent = board.name;
  const groups = groupItemsByStatus(board.items);
  const counts = countByStatus(board.items);
  const columns = $('columns');
  columns.replaceChildren(...STATUSES.map((status) => {
    const col = document.createElement('section');
    col.className = `column column-${status}`;
    col.dataset.testid = `column-${status}`;
    col.innerHTML = `<h2>${STATUS_LABELS[status]} <span class="count">${counts[status]}</span></h2><ul></ul>`;
    col.querySelector('ul').append(...groups[status].map(itemRow));
    return col;
  }));
}

async function render() {
  const route = parseRoute(location.pathname);
  await guarded(async () => {
    if (route.view === 'board') {
      try {
        await renderBoard(route.boardId);
      } catch (err) {
        currentBoard = null;
        $('board-title').textContent = 'Board not found';
        $('columns').replaceChildren();
        throw err;
      }
    } else {
      currentBoard = null;
      await renderBoards();
    }
  });
}

function wire() {
  document.getElementById('create-board-form').addEventListener('submit', (e) => {
    e.preventDefault();
    guarded(async () => {
      const input = $('board-name-input');
      const check = validateBoardName(input.value);
      if (!check.ok) throw new ApiError(check.error);
      await api('POST', apiPath.boards(), { name: check.value });
      input.value = '';
      await renderBoards();
    });
  });

  document.getElementById('add-item-form').addEventListener('submit', (e) => {
    e.preventDefault();
    guarded(async () => {
      const input = $('item-title-input');
      const check = validateTitle(input.value);
      if (!check.ok) throw new ApiError(check.error);
      await api('POST', apiPath.boardItems(currentBoard.id), { title: check.value, status: $('item-status-input').value });
      input.value = '';
      await renderBoard(currentBoard.id);
    });
  });

  $('delete-board').addEventListener('click', () => guarded(async () => {
    if (!currentBoard) return;
    await api('DELETE', apiPath.board(currentBoard.id));
    await navigate('/');
  }));

  $('board-list').addEventListener('click', (e) => {
    const del = e.target.closest('[data-testid="board-delete"]');
    if (del) {
      guarded(async () => {
        await api('DELETE', apiPath.board(del.dataset.boardId));
        await renderBoards();
      });
    }
  });

  // Intercept same-origin in-app links for client-side navigation.
  document.addEventListener('click', (e) => {
    const link = e.target.closest('a[href^="/"]');
    if (!link || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    navigate(link.getAttribute('href'));
  });
  window.addEventListener('popstate', render);
}

wire();
render();
