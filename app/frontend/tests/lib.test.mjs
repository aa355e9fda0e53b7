import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  STATUSES, apiErrorMessage, apiPath, boardHref, countByStatus, escapeHtml,
  groupItemsByStatus, isStatus, parseRoute, validateBoardName, validateTitle,
} from '../public/lib.mjs';

describe('validateTitle', () => {
  test('trims and accepts a normal title', () => {
    assert.deepEqual(validateTitle('  Ship it  '), { ok: true, value: 'Ship it' });
  });

  test('rejects empty, whitespace-only and non-string titles', () => {
    for (const bad of ['', '   ', undefined, null, 42]) {
      assert.equal(validateTitle(bad).ok, false, `expected ${JSON.stringify(bad)} to be rejected`);
    }
  });

  test('enforces the 200 character limit inclusively', () => {
    assert.equal(validateTitle('x'.repeat(200)).ok, true);
    const result = validateTitle('x'.repeat(201));
    assert.equal(result.ok, false);
    assert.match(result.error, /200/);
  });
});

describe('validateBoardName', () => {
  test('enforces 1..100 characters', () => {
    assert.equal(validateBoardName('a').ok, true);
    assert.equal(validateBoardName('a'.repeat(100)).ok, true);
    assert.equal(validateBoardName('a'.repeat(101)).ok, false);
    assert.equal(validateBoardName(' ').ok, false);
  });
});

describe('groupItemsByStatus', () => {
  test('groups by status and keeps order', () => {
    const items = [
      { id: 1, status: 'done' }, { id: 2, status: 'todo' }, { id: 3, status: 'doing' }, { id: 4, status: 'todo' },
    ];
    const groups = groupItemsByStatus(items);
    assert.deepEqual(Object.keys(groups), [...STATUSES]);
    assert.deepEqual(groups.todo.map((i) => i.id), [2, 4]);
    assert.deepEqual(groups.doing.map((i) => i.id), [3]);
    assert.deepEqual(groups.done.map((i) => i.id), [1]);
  });

  test('handles missing items and unknown statuses', () => {
    assert.deepEqual(groupItemsByStatus(undefined), { todo: [], doing: [], done: [] });
    assert.equal(groupItemsByStatus([{ id: 9, status: 'weird' }]).todo.length, 1);
  });

  test('countByStatus counts every column', () => {
    assert.deepEqual(countByStatus([{ status: 'done' }, { status: 'done' }]), { todo: 0, doing: 0, done: 2 });
  });
});

test('isStatus accepts only todo|doing|done', () => {
  assert.ok(STATUSES.every(isStatus));
  assert.equal(isStatus('TODO'), false);
  assert.equal(isStatus(undefined), false);
});

test('escapeHtml escapes markup and quotes', () => {
  assert.equal(escapeHtml('<img src=x onerror="a(\'b\')">&'),
    '&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;');
  assert.equal(escapeHtml(null), '');
  assert.equal(escapeHtml(5), '5');
});

describe('apiPath', () => {
  test('builds same-origin API paths', () => {
    assert.equal(apiPath.boards(), '/api/boards');
    assert.equal(apiPath.board(3), '/api/boards/3');
    assert.equal(apiPath.boardItems('7'), '/api/boards/7/items');
    assert.equal(apiPath.item(11), '/api/items/11');
  });

  test('rejects ids that could escape the path', () => {
    for (const bad of ['1/../../x', -1, 0, 1.5, 'abc', undefined]) {
      assert.throws(() => apiPath.board(bad), TypeError);
    }
  });
});

describe('routing', () => {
  test('parseRoute understands the two views', () => {
    assert.deepEqual(parseRoute('/'), { view: 'boards' });
    assert.deepEqual(parseRoute('/boards/12'), { view: 'board', boardId: 12 });
    assert.deepEqual(parseRoute('/boards/12/'), { view: 'board', boardId: 12 });
    assert.deepEqual(parseRoute('/boards/x'), { view: 'boards' });
  });

  test('boardHref round-trips through parseRoute', () => {
    assert.deepEqual(parseRoute(boardHref(5)), { view: 'board', boardId: 5 });
  });
});

test('apiErrorMessage prefers the API error text', () => {
  assert.equal(apiErrorMessage(400, { error: 'name must be 1..100 characters' }), 'name must be 1..100 characters');
  assert.equal(apiErrorMessage(0, null), 'Network error: the API is unreachable');
  assert.equal(apiErrorMessage(413, null), 'Request too large');
  assert.equal(apiErrorMessage(503, { status: 'unavailable' }), 'Server error (503)');
  assert.equal(apiErrorMessage(404, null), 'Request failed (404)');
});
