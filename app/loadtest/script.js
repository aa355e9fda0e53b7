// k6 load test of Sunday: constant virtual users reading the app shell and the board list.
//   k6 run -e BASE_URL=http://127.0.0.1:8081 --vus 10 --duration 30s app/loadtest/script.js
// VUS and DURATION may also come from -e VUS=… -e DURATION=…; thresholds live in thresholds.json
// (k6 exits 99 when one is crossed).
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8081').replace(/\/$/, '');
const THINK_SECONDS = Number(__ENV.THINK_SECONDS || '0.5');

export const options = {
  vus: Number(__ENV.VUS || '10'),
  duration: __ENV.DURATION || '30s',
  thresholds: JSON.parse(open('./thresholds.json')),
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  noConnectionReuse: false,
  userAgent: 'sunday-release-k6',
};

export default function () {
  const page = http.get(`${BASE_URL}/`, { tags: { name: 'app' } });
  check(page, { 'app shell 200': (r) => r.status === 200 });
  const boards = http.get(`${BASE_URL}/api/boards`, { tags: { name: 'api-boards' } });
  check(boards, {
    'boards 200': (r) => r.status === 200,
    'boards is a list': (r) => Array.isArray((r.json() || {}).boards),
  });
  sleep(THINK_SECONDS);
}
