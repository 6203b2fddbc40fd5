// The scenarios the bench reports, in table order, and the targets the service must meet. A
// ratio is always taken against a baseline measured in the same run.

export type ScenarioKey =
  | 'sql-cycle'
  | 'node-cycle'
  | 'express-cycle'
  | 'http-cycle'
  | 'http-cycle-limited'
  | 'http-cycle-2'
  | 'http-cycle-jwt'
  | 'sql-cycle-large'
  | 'http-cycle-large'
  | 'exhausted'
  | 'bare-node'
  | 'bare-express'
  | 'list'
  | 'list-jwt'
  | 'token'
  | 'validate'
  | 'expiry'
  | 'event-latency'
  | 'webhook-lag'
  | 'webhook-deliveries'
  | 'rss';

/** What `--only` selects: each group measures its scenarios and their baselines. */
export const GROUPS = ['cycle', 'limits', 'ceilings', 'processes', 'large', 'exhausted', 'list', 'jwt', 'reads', 'expiry', 'events', 'webhooks'] as const;
export type Group = (typeof GROUPS)[number];
/**
 * What a run without `--only` measures: every group but `ceilings` (the cycle behind bare
 * node:http and bare Express) and `processes` (the cycle with API_PROCESSES=2), which would
 * take the default run past 5 minutes.
 */
export const DEFAULT_GROUPS: readonly Group[] = GROUPS.filter((g) => g !== 'ceilings' && g !== 'processes');

export interface Target {
  /** The scenario whose figure this one is divided by; absent for an absolute target. */
  readonly baseline?: ScenarioKey;
  /** Met when ratio (or value) >= min, or <= max. */
  readonly min?: number;
  readonly max?: number;
  readonly text: string;
}

export interface ScenarioSpec {
  readonly key: ScenarioKey;
  readonly label: (sizes: { largePool: number; expiryLeases: number; expiryTtlMs: number; subscribers: number }) => string;
  readonly unit: 'cycles/s' | 'req/s' | 'deliveries/s' | 'ms' | 'MB';
  readonly target?: Target;
  /** Shown for context, without a target. */
  readonly compareWith?: ScenarioKey;
}

const count = (n: number) => n.toLocaleString('en-US');

export const SCENARIOS: readonly ScenarioSpec[] = [
  { key: 'sql-cycle', label: () => 'raw SQL cycle, pool 100 (baseline)', unit: 'cycles/s' },
  {
    key: 'node-cycle',
    label: () => 'node:http + raw SQL cycle (baseline)',
    unit: 'cycles/s',
    compareWith: 'sql-cycle',
  },
  {
    key: 'express-cycle',
    label: () => 'Express + raw SQL cycle (baseline)',
    unit: 'cycles/s',
    compareWith: 'sql-cycle',
  },
  {
    key: 'http-cycle',
    label: () => 'HTTP activate + release, pool 100',
    unit: 'cycles/s',
    target: { baseline: 'sql-cycle', min: 0.6, text: '>= 0.6 x raw SQL' },
  },
  {
    key: 'http-cycle-limited',
    label: () => 'HTTP activate + release, pool 100, rate limits on, not reached',
    unit: 'cycles/s',
    target: { baseline: 'http-cycle', min: 0.85, text: '>= 0.85 x limits off' },
  },
  {
    key: 'http-cycle-2',
    label: () => 'HTTP activate + release, pool 100, API_PROCESSES=2',
    unit: 'cycles/s',
    compareWith: 'http-cycle',
  },
  {
    key: 'http-cycle-jwt',
    label: () => 'HTTP activate + release, pool 100, AUTH_MODE=jwt',
    unit: 'cycles/s',
    target: { baseline: 'http-cycle', min: 0.85, text: '>= 0.85 x AUTH_MODE=none' },
  },
  {
    key: 'sql-cycle-large',
    label: (s) => `raw SQL cycle, pool ${count(s.largePool)}`,
    unit: 'cycles/s',
    compareWith: 'sql-cycle',
  },
  {
    key: 'http-cycle-large',
    label: (s) => `HTTP activate + release, pool ${count(s.largePool)}`,
    unit: 'cycles/s',
    target: { baseline: 'http-cycle', min: 0.9, text: '>= 0.9 x pool 100' },
  },
  {
    key: 'exhausted',
    label: () => 'HTTP activate, full pool (409)',
    unit: 'req/s',
    target: { baseline: 'http-cycle', min: 3, text: '>= 3 x cycle rate' },
  },
  { key: 'bare-node', label: () => 'node:http, same JSON (baseline)', unit: 'req/s' },
  { key: 'bare-express', label: () => 'Express, same JSON (baseline)', unit: 'req/s' },
  {
    key: 'list',
    label: () => 'GET /api/tokens, pool 100',
    unit: 'req/s',
    target: { baseline: 'bare-express', min: 0.8, text: '>= 0.8 x Express' },
  },
  {
    key: 'list-jwt',
    label: () => 'GET /api/tokens, pool 100, AUTH_MODE=jwt',
    unit: 'req/s',
    target: { baseline: 'list', min: 0.85, text: '>= 0.85 x AUTH_MODE=none' },
  },
  { key: 'token', label: () => 'GET /api/tokens/:id', unit: 'req/s' },
  { key: 'validate', label: () => 'POST /api/tokens/:id/validate', unit: 'req/s' },
  {
    key: 'expiry',
    label: (s) => `expiry lateness, ${count(s.expiryLeases)} leases, ${s.expiryTtlMs / 1000} s TTL`,
    unit: 'ms',
    target: { max: 250, text: 'p99 <= 250 ms, max <= 1 s' },
  },
  {
    key: 'event-latency',
    label: (s) => `activation answer to its event at ${count(s.subscribers)} stream subscribers, API_PROCESSES=2`,
    unit: 'ms',
    target: { max: 250, text: 'p99 <= 250 ms' },
  },
  {
    key: 'webhook-lag',
    label: () => 'webhook: event to its first delivery attempt, 20 activations/s',
    unit: 'ms',
    target: { max: 1_000, text: 'p99 <= 1 s' },
  },
  {
    key: 'webhook-deliveries',
    label: () => 'webhook deliveries to a local receiver, one worker, backlog of a cycle burst',
    unit: 'deliveries/s',
  },
  {
    key: 'rss',
    label: () => 'API process RSS after the run',
    unit: 'MB',
    target: { max: 150, text: '<= 150 MB' },
  },
];

export const EXPIRY_MAX_LATENESS_MS = 1_000;
