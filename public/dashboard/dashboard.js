// The dashboard: a pool's tokens, kept current from the event stream, a token's history, the
// pool's activity from GET /api/stats, and the admin actions once an admin credential is given.
// Plain ES modules served by the service; uPlot is served from node_modules (vendor/).

import uPlot from './vendor/uPlot.esm.js';
import { ApiError, call, follow, hasBearer, serves, setBearer } from './api.js';

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 10;
const DENSE_FROM = 1000;

const state = {
  pool: 'default',
  /** token id -> { status, userId, expiresAt (ms or null) } */
  tokens: new Map(),
  /** token id -> its cell */
  cells: new Map(),
  order: [],
  held: new Set(),
  selected: null,
  historyCursor: null,
  admin: false,
  stream: null,
  lastEventId: undefined,
  charts: [],
};

function say(text) {
  $('status').textContent = text;
}

function describe(id, token) {
  const n = state.order.indexOf(id) + 1;
  if (token.status === 'active') {
    const who = token.userId === null ? 'held' : `held by ${token.userId}`;
    return `Token ${n}, ${who}, ${timeLeft(token)}`;
  }
  return `Token ${n}, ${token.status === 'retired' ? 'retired' : 'free'}`;
}

function timeLeft(token) {
  if (token.expiresAt === null) return '';
  const s = Math.max(0, Math.ceil((token.expiresAt - Date.now()) / 1000));
  const m = Math.floor(s / 60);
  return `${m > 0 ? `${m} min ` : ''}${s % 60} s left`;
}

function paint(id) {
  const cell = state.cells.get(id);
  const token = state.tokens.get(id);
  if (cell === undefined || token === undefined) return;
  cell.className = token.status;
  cell.dataset.status = token.status;
  cell.setAttribute('aria-label', describe(id, token));
  cell.title = cell.getAttribute('aria-label');
  if (token.status === 'active') state.held.add(id);
  else state.held.delete(id);
}

function summarise() {
  let held = 0;
  let retired = 0;
  for (const token of state.tokens.values()) {
    if (token.status === 'active') held += 1;
    else if (token.status === 'retired') retired += 1;
  }
  const free = state.tokens.size - held - retired;
  $('summary').textContent = `${state.tokens.size} tokens: ${free} free, ${held} held, ${retired} retired.`;
}

function fromJson(t) {
  return { status: t.status, userId: t.current_user_id ?? null, expiresAt: t.expires_at === null ? null : Date.parse(t.expires_at) };
}

async function loadTokens() {
  const list = await call(`/api/pools/${encodeURIComponent(state.pool)}/tokens`);
  const grid = $('grid');
  state.tokens = new Map(list.map((t) => [t.id, fromJson(t)]));
  state.order = list.map((t) => t.id);
  state.cells = new Map();
  state.held = new Set();
  grid.classList.toggle('dense', list.length >= DENSE_FROM);
  const fragment = document.createDocumentFragment();
  state.order.forEach((id, i) => {
    const cell = document.createElement('button');
    cell.type = 'button';
    cell.tabIndex = i === 0 ? 0 : -1;
    cell.dataset.tokenId = id;
    cell.setAttribute('aria-pressed', 'false');
    state.cells.set(id, cell);
    fragment.append(cell);
  });
  grid.replaceChildren(fragment);
  for (const id of state.order) paint(id);
  summarise();
  if (state.selected !== null && !state.tokens.has(state.selected)) closeToken();
  else if (state.selected !== null) showFacts();
}

function columns() {
  const first = $('grid').firstElementChild;
  if (first === null) return 1;
  return Math.max(1, Math.round($('grid').clientWidth / (first.getBoundingClientRect().width + 1)));
}

function moveFocus(from, delta) {
  const at = state.order.indexOf(from);
  const to = Math.min(state.order.length - 1, Math.max(0, at + delta));
  const cell = state.cells.get(state.order[to]);
  const old = state.cells.get(from);
  if (cell === undefined || old === undefined) return;
  old.tabIndex = -1;
  cell.tabIndex = 0;
  cell.focus();
}

function onGridKey(event) {
  const id = event.target.dataset?.tokenId;
  if (id === undefined) return;
  const steps = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns(), Home: -Infinity, End: Infinity };
  const step = steps[event.key];
  if (step === undefined) return;
  event.preventDefault();
  moveFocus(id, Number.isFinite(step) ? step : step > 0 ? state.order.length : -state.order.length);
}

function showFacts() {
  const token = state.tokens.get(state.selected);
  if (token === undefined) return;
  const facts = [
    ['Id', state.selected],
    ['State', token.status === 'active' ? 'held' : token.status === 'retired' ? 'retired' : 'free'],
  ];
  if (token.status === 'active') {
    facts.push(['Holder', token.userId ?? 'not shown to you'], ['Time left', timeLeft(token)]);
  }
  $('token-facts').replaceChildren(
    ...facts.flatMap(([name, value]) => {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value;
      if (name === 'Time left') dd.id = 'time-left';
      return [dt, dd];
    }),
  );
  $('revoke').hidden = !(state.admin && state.canRevoke && token.status === 'active');
  $('retire').hidden = !(state.admin && state.canRetire && token.status !== 'retired');
  $('token-admin').hidden = !state.admin;
}

async function openToken(id) {
  if (state.selected !== null) state.cells.get(state.selected)?.setAttribute('aria-pressed', 'false');
  state.selected = id;
  state.cells.get(id)?.setAttribute('aria-pressed', 'true');
  $('token').hidden = false;
  $('token-title').textContent = `Token ${state.order.indexOf(id) + 1}`;
  showFacts();
  $('history').tBodies[0].replaceChildren();
  state.historyCursor = null;
  await loadHistory();
}

function closeToken() {
  state.selected = null;
  $('token').hidden = true;
}

async function loadHistory() {
  const id = state.selected;
  const cursor = state.historyCursor === null ? '' : `&cursor=${encodeURIComponent(state.historyCursor)}`;
  const page = await call(`/api/tokens/${id}/history?limit=${HISTORY_PAGE}${cursor}`);
  if (id !== state.selected) return;
  const rows = page.usages.map((u) => {
    const tr = document.createElement('tr');
    for (const text of [u.fence, u.user_id ?? '—', when(u.started_at), u.ended_at === null ? 'open' : when(u.ended_at), u.end_reason ?? '']) {
      const td = document.createElement('td');
      td.textContent = String(text);
      tr.append(td);
    }
    return tr;
  });
  if (rows.length === 0 && state.historyCursor === null) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 5;
    td.textContent = 'Never leased.';
    tr.append(td);
    rows.push(tr);
  }
  $('history').tBodies[0].append(...rows);
  state.historyCursor = page.next_cursor;
  $('older').hidden = page.next_cursor === null;
}

function when(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// The event stream: each lease event of the chosen pool changes one cell.
const ENDED = new Set(['lease.released', 'lease.expired', 'lease.cleared', 'lease.evicted', 'lease.revoked', 'lease.redeemed', 'lease.retired']);

function onEvent(type, event, id) {
  if (id !== undefined) state.lastEventId = id;
  if (type === 'reset') {
    void loadTokens().catch(report);
    return;
  }
  const data = event?.data;
  if (data === undefined || data.pool !== state.pool || !state.tokens.has(data.token_id)) return;
  const token = state.tokens.get(data.token_id);
  if (type === 'lease.activated' || type === 'lease.renewed') {
    Object.assign(token, { status: 'active', userId: data.user_id ?? null, expiresAt: Date.parse(data.expires_at) });
  } else if (type === 'token.retired' || type === 'lease.retired') {
    Object.assign(token, { status: 'retired', userId: null, expiresAt: null });
  } else if (ENDED.has(type)) {
    Object.assign(token, { status: 'available', userId: null, expiresAt: null });
  } else {
    return;
  }
  paint(data.token_id);
  summarise();
  if (data.token_id === state.selected) showFacts();
  scheduleStats();
}

async function startStream() {
  if (!(await serves('get', '/api/events/stream'))) {
    $('live').textContent = 'not live: this service has no event stream';
    return;
  }
  state.stream?.abort();
  const controller = new AbortController();
  state.stream = controller;
  let delayMs = 500;
  while (!controller.signal.aborted) {
    try {
      await follow('/api/events/stream', {
        lastEventId: state.lastEventId,
        signal: controller.signal,
        onOpen: () => {
          $('live').textContent = 'live';
          delayMs = 500;
        },
        onEvent,
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        $('live').textContent = 'not live: sign in to follow changes';
        return;
      }
    }
    $('live').textContent = 'reconnecting…';
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    delayMs = Math.min(10_000, delayMs * 2);
  }
}

// Time left counts down; a lease past its expiry counts as free, as the token list shows it.
function tick() {
  const now = Date.now();
  for (const id of [...state.held]) {
    const token = state.tokens.get(id);
    if (token !== undefined && token.expiresAt !== null && token.expiresAt <= now) {
      Object.assign(token, { status: 'available', userId: null, expiresAt: null });
      paint(id);
      summarise();
    }
  }
  const token = state.tokens.get(state.selected);
  const left = $('time-left');
  if (token !== undefined && left !== null) left.textContent = timeLeft(token);
}

// Charts: the last hour per minute, read again at most every 10 s while events arrive.
let statsTimer;
function scheduleStats() {
  statsTimer ??= setTimeout(() => {
    statsTimer = undefined;
    void loadStats().catch(report);
  }, 10_000);
}

async function loadStats() {
  const stats = await call(`/api/stats?pool=${encodeURIComponent(state.pool)}&bucket=60`);
  const xs = stats.buckets.map((b) => Date.parse(b.start) / 1000);
  const pick = (key) => stats.buckets.map((b) => b[key]);
  const sum = (key) => pick(key).reduce((a, b) => a + b, 0);
  $('stats-summary').textContent =
    `In the last hour: ${sum('activations')} activations, ${sum('expiries')} expiries, ` +
    `${sum('refusals')} refusals, ${sum('waits')} waits.`;
  for (const chart of state.charts) chart.destroy();
  const width = Math.max(200, $('chart-held').clientWidth || 300);
  const axes = [{}, { size: 50 }];
  state.charts = [
    new uPlot(
      { width, height: 160, axes, legend: { show: true }, scales: { y: { range: [0, 100] } }, series: [{}, { label: 'held %', stroke: '#1d4ed8', fill: 'rgba(29,78,216,0.15)' }] },
      [xs, pick('held_share').map((s) => Math.round(s * 1000) / 10)],
      $('chart-held'),
    ),
    new uPlot(
      {
        width,
        height: 180,
        axes,
        series: [
          {},
          { label: 'activations', stroke: '#15803d' },
          { label: 'expiries', stroke: '#b45309' },
          { label: 'refusals', stroke: '#b91c1c' },
          { label: 'waits', stroke: '#6d28d9' },
        ],
      },
      [xs, pick('activations'), pick('expiries'), pick('refusals'), pick('waits')],
      $('chart-counts'),
    ),
  ];
}

function report(error) {
  say(error instanceof ApiError ? `${error.message} (${error.code})` : String(error));
}

async function loadPools() {
  const pools = await call('/api/pools');
  const select = $('pool');
  select.replaceChildren(
    ...pools.map((p) => {
      const option = document.createElement('option');
      option.value = p.name;
      option.textContent = `${p.name} (${p.size})`;
      return option;
    }),
  );
  if (!pools.some((p) => p.name === state.pool)) state.pool = pools[0]?.name ?? 'default';
  select.value = state.pool;
  select.disabled = false;
}

async function showPool() {
  closeToken();
  await loadTokens();
  await loadStats();
}

async function signIn(event) {
  event.preventDefault();
  const input = $('bearer');
  setBearer(input.value);
  input.value = '';
  // The admin routes answer this credential only if it carries the admin scope.
  state.admin = await call('/api/admin/pools').then(
    () => true,
    () => false,
  );
  $('admin').hidden = !state.admin;
  $('signin-why').textContent = state.admin ? 'Signed in with admin rights.' : 'Signed in, without admin rights.';
  say(state.admin ? 'Admin actions are available.' : 'Signed in.');
  if (state.selected !== null) showFacts();
  await start();
}

async function clearPool() {
  $('clear-confirm').hidden = true;
  const { cleared_tokens: cleared } = await call(`/api/pools/${encodeURIComponent(state.pool)}/tokens/clear`, { method: 'POST' });
  say(`Cleared ${cleared} leases of ${state.pool}.`);
  await loadTokens();
}

async function adminOnToken(kind) {
  const id = state.selected;
  const token = state.tokens.get(id);
  if (id === null || token === undefined) return;
  if (kind === 'revoke') {
    // The token list names no lease; the token's details do, to an admin.
    const details = await call(`/api/tokens/${id}`);
    const leaseId = details.active_usage?.lease_id;
    if (leaseId === undefined || leaseId === null) {
      say('This token has no lease to revoke any more.');
    } else {
      await call(`/api/admin/leases/${leaseId}/revoke`, { method: 'POST' });
      say(`Token ${state.order.indexOf(id) + 1}: lease revoked.`);
    }
    await loadTokens();
    return;
  }
  const { status } = await call(`/api/admin/tokens/${id}/retire`, { method: 'POST' });
  say(`Token ${state.order.indexOf(id) + 1}: ${status === 'retiring' ? 'retires once its lease ends' : 'retired'}.`);
  await loadTokens();
}

let started = false;
async function start() {
  try {
    await loadPools();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && !hasBearer()) {
      $('signin-why').textContent = 'This service asks for a credential with the read or admin scope.';
      $('live').textContent = 'signed out';
      $('bearer').focus();
      return;
    }
    throw error;
  }
  await showPool();
  if (!started) {
    started = true;
    setInterval(tick, 1000);
  }
  void startStream();
}

function wire() {
  $('signin-form').addEventListener('submit', (event) => void signIn(event).catch(report));
  $('pool').addEventListener('change', (event) => {
    state.pool = event.target.value;
    void showPool().catch(report);
  });
  $('grid').addEventListener('click', (event) => {
    const id = event.target.dataset?.tokenId;
    if (id !== undefined) void openToken(id).catch(report);
  });
  $('grid').addEventListener('keydown', onGridKey);
  $('older').addEventListener('click', () => void loadHistory().catch(report));
  $('clear').addEventListener('click', () => {
    $('clear-confirm').hidden = false;
    $('clear-confirm').focus();
  });
  $('clear-confirm').addEventListener('click', () => void clearPool().catch(report));
  $('retire').addEventListener('click', () => void adminOnToken('retire').catch(report));
  $('revoke').addEventListener('click', () => void adminOnToken('revoke').catch(report));
  void Promise.all([serves('post', '/api/admin/leases/{lease_id}/revoke'), serves('post', '/api/admin/tokens/{id}/retire')]).then(
    ([revoke, retire]) => {
      state.canRevoke = revoke;
      state.canRetire = retire;
    },
  );
}

wire();
start().catch(report);
