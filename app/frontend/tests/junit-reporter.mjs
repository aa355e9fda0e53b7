// JUnit XML reporter for `node --test` (Node >= 18.15 custom reporter API).
// Usage: node --test --test-reporter=./tests/junit-reporter.mjs --test-reporter-destination=junit.xml tests/
// Events (Node 18.19/20): test:pass / test:fail {name, nesting, file?, skip?, todo?, details:{duration_ms, error?}},
// test:diagnostic {message, nesting}. Events arrive in completion order, so a test's subtests arrive
// before it; a test that had subtests is a suite, only leaves become <testcase>s.
import path from 'node:path';

// eslint-disable-next-line no-control-regex
const INVALID_XML = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/g;
const esc = (s) => String(s ?? '').replace(INVALID_XML, '').replace(/[&<>"']/g,
  (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]);
const looksLikeFile = (name, file) => name === file || /[\\/].*\.[cm]?js$/.test(String(name));
const rel = (file) => {
  if (!file) return 'tests';
  const p = String(file).replace(/^file:(\/\/)?/, '');  // Node 18 reports "file:/src/tests/x.test.mjs"
  return path.isAbsolute(p) ? path.relative(process.cwd(), p) || p : p;
};

export default async function* junitReporter(source) {
  const buckets = [];       // buckets[n]: finished leaves waiting for their parent at nesting n-1
  const diagnostics = [];
  for await (const { type, data } of source) {
    if (type === 'test:diagnostic') {
      if (!data.nesting) diagnostics.push(data.message);
      continue;
    }
    if (type !== 'test:pass' && type !== 'test:fail') continue;
    const n = data.nesting ?? 0;
    const children = buckets[n + 1] || [];
    buckets[n + 1] = [];
    buckets[n] ||= [];
    if (children.length > 0) {            // a suite (describe, parent test, or a per-file wrapper)
      const isFile = looksLikeFile(data.name, data.file);
      for (const child of children) {
        if (isFile) child.file ||= data.name; else child.path.unshift(data.name);
        child.file ||= data.file;
      }
      buckets[n].push(...children);
      continue;
    }
    const err = data.details?.error;
    const cause = err?.cause ?? err;
    buckets[n].push({
      name: data.name, path: [], file: data.file,
      time: (data.details?.duration_ms ?? 0) / 1000,
      skipped: (data.skip !== undefined && data.skip !== false) || (data.todo !== undefined && data.todo !== false),
      failed: type === 'test:fail' && (data.todo === undefined || data.todo === false),
      message: String(cause?.message ?? cause ?? 'failed').replace(/\s+/g, ' ').trim(),
      errorType: cause?.name || 'Error',
      detail: cause?.stack ?? '',
    });
  }
  const cases = buckets.flat();
  const suites = new Map();
  for (const c of cases) {
    const key = rel(c.file);
    if (!suites.has(key)) suites.set(key, []);
    suites.get(key).push(c);
  }
  const count = (list, f) => list.filter(f).length;
  const sum = (list) => list.reduce((t, c) => t + c.time, 0).toFixed(3);
  let xml = '<?xml version="1.0" encoding="UTF-8"?>\n';
  xml += `<testsuites name="node --test" tests="${cases.length}" failures="${count(cases, (c) => c.failed)}"`
    + ` errors="0" skipped="${count(cases, (c) => c.skipped)}" time="${sum(cases)}">\n`;
  for (const [file, list] of suites) {
    xml += `  <testsuite name="${esc(file)}" tests="${list.length}" failures="${count(list, (c) => c.failed)}"`
      + ` errors="0" skipped="${count(list, (c) => c.skipped)}" time="${sum(list)}">\n`;
    for (const c of list) {
      const classname = [file.replace(/\.[cm]?js$/, ''), ...c.path].join(' > ');
      xml += `    <testcase name="${esc(c.name)}" classname="${esc(classname)}" time="${c.time.toFixed(3)}"`;
      if (c.failed) {
        xml += `>\n      <failure message="${esc(c.message)}" type="${esc(c.errorType)}">${esc(c.detail)}</failure>\n    </testcase>\n`;
        process.stderr.write(`not ok - ${classname} > ${c.name}: ${c.message}\n`);
      } else if (c.skipped) {
        xml += '>\n      <skipped/>\n    </testcase>\n';
      } else {
        xml += '/>\n';
      }
    }
    xml += '  </testsuite>\n';
  }
  if (diagnostics.length) xml += `  <!-- ${esc(diagnostics.join('; ')).replace(/--/g, '- -')} -->\n`;
  xml += '</testsuites>\n';
  process.stderr.write(`junit: ${cases.length} tests, ${count(cases, (c) => c.failed)} failed, `
    + `${count(cases, (c) => c.skipped)} skipped\n`);
  yield xml;
}
