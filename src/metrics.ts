import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { within } from './timeouts.js';

/** The service's Prometheus metrics, on a registry of their own (one per process, or per test). */
export function createMetrics(options: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (options.defaultMetrics ?? false) collectDefaultMetrics({ register: registry });
  return {
    registry,
    activations: new Counter({
      name: 'token_lease_activations_total',
      help: 'Activation requests by pool and outcome: created, existing or exhausted.',
      labelNames: ['pool', 'outcome'] as const,
      registers: [registry],
    }),
    evictions: new Counter({
      name: 'token_lease_evictions_total',
      help: 'Leases ended to give their token to a newcomer, by pool (full_policy evict_oldest).',
      labelNames: ['pool'] as const,
      registers: [registry],
    }),
    leasesEnded: new Counter({
      name: 'token_lease_leases_ended_total',
      help: 'Leases ended, by end_reason and by what ended them (job, sweep, clear, activation, release).',
      labelNames: ['reason', 'by'] as const,
      registers: [registry],
    }),
    enqueueFailures: new Counter({
      name: 'token_lease_release_enqueue_failures_total',
      help: 'Release jobs that could not be added to Redis; the sweep ends those leases instead.',
      registers: [registry],
    }),
    sweepRuns: new Counter({
      name: 'token_lease_sweep_runs_total',
      help: 'Sweep runs by result: ran, skipped (another worker held the lock) or failed.',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    maintenanceRuns: new Counter({
      name: 'token_lease_maintenance_runs_total',
      help: 'Database upkeep runs by result: ran, skipped (another worker held the lock) or failed.',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    vacuums: new Counter({
      name: 'token_lease_vacuums_total',
      help: 'VACUUMs the upkeep ran, by table, because its dead rows passed VACUUM_DEAD_ROWS.',
      labelNames: ['table'] as const,
      registers: [registry],
    }),
    usagesRemoved: new Counter({
      name: 'token_lease_usages_removed_total',
      help: 'Ended usages removed from the history, older than HISTORY_RETENTION_DAYS.',
      registers: [registry],
    }),
    eventsRemoved: new Counter({
      name: 'token_lease_events_removed_total',
      help: 'Events removed from the event log, older than HISTORY_RETENTION_DAYS.',
      registers: [registry],
    }),
    webhookAttempts: new Counter({
      name: 'token_lease_webhook_attempts_total',
      help: 'Webhook delivery attempts, by what they left: succeeded, retry (failed, tried again later) or failed (for good).',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    openStreams: new Gauge({
      name: 'token_lease_event_streams',
      help: 'Event streams (GET /api/events/stream) open on this process.',
      registers: [registry],
    }),
    rateLimitStoreFailures: new Counter({
      name: 'token_lease_rate_limit_store_failures_total',
      help: 'Requests let through uncounted, by budget (lease or admin), because the rate limiter could not reach Redis.',
      labelNames: ['budget'] as const,
      registers: [registry],
    }),
    expiryLateness: new Histogram({
      name: 'token_lease_expiry_lateness_seconds',
      help: 'How long after its expires_at a lease that ran out was ended (by its release job, the sweep, or a call that found it run out).',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
    releaseJobFailures: new Counter({
      name: 'token_lease_release_job_failures_total',
      help: 'Release job attempts that failed (each is retried with backoff; the sweep covers the lease meanwhile).',
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: 'token_lease_http_request_duration_seconds',
      help: 'HTTP request duration by method, route and status code.',
      labelNames: ['method', 'route', 'status'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/**
 * token_lease_tokens{pool,state}: each pool's tokens, free, held and retired, read from PostgreSQL when
 * the metrics are scraped. Registered by the processes that run the worker role: each reports
 * the same numbers, so aggregate them with max, not sum. A read that fails leaves the gauge
 * empty for that scrape rather than failing it.
 */
export function registerTokenGauge(
  metrics: Metrics,
  read: () => Promise<
    ReadonlyArray<{ readonly name: string; readonly free: number; readonly held: number; readonly retired: number }>
  >,
): void {
  new Gauge({
    name: 'token_lease_tokens',
    help: 'Tokens by pool and state (free, held or retired), read from PostgreSQL at each scrape; the same in every worker process.',
    labelNames: ['pool', 'state'] as const,
    registers: [metrics.registry],
    async collect() {
      this.reset();
      const pools = await read().catch(() => []);
      for (const pool of pools) {
        this.set({ pool: pool.name, state: 'free' }, pool.free);
        this.set({ pool: pool.name, state: 'held' }, pool.held);
        this.set({ pool: pool.name, state: 'retired' }, pool.retired);
      }
    },
  });
}

/**
 * A gauge read when the metrics are scraped: `read` gives its value, or its value per value of
 * its one label. A read that fails or takes over a second leaves the gauge empty for that scrape
 * rather than failing the scrape.
 */
export function registerScrapedGauge(
  metrics: Metrics,
  gauge: { name: string; help: string; label?: string },
  read: () => number | Record<string, number> | Promise<number | Record<string, number>>,
): void {
  const { label } = gauge;
  new Gauge({
    name: gauge.name,
    help: gauge.help,
    labelNames: label === undefined ? [] : [label],
    registers: [metrics.registry],
    async collect() {
      this.reset();
      const value = await within(Promise.resolve().then(read), 1_000).catch(() => undefined);
      if (value === undefined) return;
      if (typeof value === 'number') {
        this.set(value);
        return;
      }
      for (const [key, n] of Object.entries(value)) this.set(label === undefined ? {} : { [label]: key }, n);
    },
  });
}

/** What a process reports about itself at each scrape; each is absent where the process has none. */
export interface ProcessGauges {
  /** PostgreSQL pool: connections open, idle, and requests waiting for one. */
  readonly dbPool: { readonly totalCount: number; readonly idleCount: number; readonly waitingCount: number };
  /** Resolves when PostgreSQL answers (as /readyz asks it). */
  readonly ready: () => Promise<void>;
  /** Clients waiting for a token on this process (?wait=), and MAX_WAITERS. */
  readonly waiting?: { readonly size: () => number; readonly max: number } | undefined;
  /** Whether the LISTEN connection (waiter wake-ups, list changes, revoked keys) is up. */
  readonly listening?: (() => boolean) | undefined;
  /** The release queue's jobs by state (delayed, waiting, failed), read from Redis. */
  readonly releaseJobs?: (() => Promise<Record<string, number>>) | undefined;
}

export function registerProcessGauges(metrics: Metrics, sources: ProcessGauges): void {
  const { dbPool } = sources;
  registerScrapedGauge(
    metrics,
    { name: 'token_lease_db_pool_connections', help: "This process's PostgreSQL pool connections, in_use and idle.", label: 'state' },
    () => ({ in_use: dbPool.totalCount - dbPool.idleCount, idle: dbPool.idleCount }),
  );
  registerScrapedGauge(
    metrics,
    { name: 'token_lease_db_pool_waiting', help: "Queries waiting for a connection of this process's PostgreSQL pool." },
    () => dbPool.waitingCount,
  );
  registerScrapedGauge(
    metrics,
    { name: 'token_lease_ready', help: 'Whether this process is ready (/readyz): 1 while PostgreSQL answers within 1 s, else 0.' },
    // Within the scrape's second, so that a silent PostgreSQL reads as 0 rather than no value.
    () => within(sources.ready(), 900).then(() => 1, () => 0),
  );
  const { waiting, listening, releaseJobs } = sources;
  if (waiting !== undefined) {
    registerScrapedGauge(
      metrics,
      { name: 'token_lease_waiting_clients', help: 'Clients waiting for a token (?wait=) on this process.' },
      () => waiting.size(),
    );
    registerScrapedGauge(
      metrics,
      { name: 'token_lease_waiting_clients_limit', help: 'MAX_WAITERS: the most clients this process lets wait; more are answered 503.' },
      () => waiting.max,
    );
  }
  if (listening !== undefined) {
    registerScrapedGauge(
      metrics,
      { name: 'token_lease_listener_connected', help: "Whether this process's LISTEN connection to PostgreSQL is up (1) or reconnecting (0)." },
      () => (listening() ? 1 : 0),
    );
  }
  if (releaseJobs !== undefined) {
    registerScrapedGauge(
      metrics,
      {
        name: 'token_lease_release_jobs',
        help: 'Release jobs in Redis by state: delayed, waiting, failed; the same in every worker process.',
        label: 'state',
      },
      releaseJobs,
    );
  }
}
