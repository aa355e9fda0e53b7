// Constant load on an environment's URL while deploys happen: the SPA and the API, every request checked.
// k6 run -e BASE_URL=http://127.0.0.1:8081 -e VUS=20 -e DURATION=10m --summary-export out.json constant_load.js
// Stop it with SIGINT when the deploys are done: k6 still writes the summary.
import http from 'k6/http';
import { check, sleep } from 'k6';

export const options = {
  vus: Number(__ENV.VUS || 20),
  duration: __ENV.DURATION || '10m',
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const BASE = __ENV.BASE_URL;

export default function () {
  const page = http.get(`${BASE}/`, { tags: { name: 'spa' } });
  check(page, { 'spa 200': (r) => r.status === 200 });
  const api = http.get(`${BASE}/api/boards`, { tags: { name: 'api' } });
  check(api, { 'api 200': (r) => r.status === 200 });
  sleep(0.1); // think time: 20 users, not 20 tight loops
}
