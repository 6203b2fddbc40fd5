import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { API_KEY_PREFIX } from './domain/clients.js';

// Every setting the service reads, with its default. `.env.example` and the README's
// configuration table list the same variables; a test keeps docker-compose.yml in step.

/** A whole number from `min` to `max`, written in plain digits. */
const digits = (min: number, max: number) =>
  z
    .string()
    .regex(/^[0-9]+$/, 'must be a whole number, in digits')
    .transform(Number)
    .pipe(z.number().min(min).max(max));

/** The same, `fallback` when unset. (Coercing with Number() read '' as 0, and took 1e3 or 0x10.) */
const whole = (fallback: number, min: number, max: number) => digits(min, max).default(fallback);

/** The longest timer Node.js keeps (a longer one fires at once), and PostgreSQL's longest timeout. */
const MAX_MS = 2_147_483_647;

const milliseconds = (fallback: number, min: number, max = MAX_MS) => whole(fallback, min, max);

/**
 * The nodes of a Redis Cluster, `host:port,host:port` (an IPv6 address in brackets, `[::1]:7000`):
 * the ones the service first asks for the cluster's layout, which lists the rest.
 */
const clusterNodes = z.string().transform((list, ctx) => {
  const nodes: Array<{ host: string; port: number }> = [];
  for (const node of list.split(',').map((n) => n.trim()).filter(Boolean)) {
    const match = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$/.exec(node);
    const port = Number(match?.[2]);
    if (match?.[1] === undefined || port < 1 || port > 65535) {
      ctx.issues.push({ code: 'custom', input: list, message: `must be host:port, comma-separated (not ${node})` });
      return z.NEVER;
    }
    nodes.push({ host: match[1].replace(/^\[(.*)\]$/, '$1'), port });
  }
  if (nodes.length === 0) {
    ctx.issues.push({ code: 'custom', input: list, message: 'must be host:port, comma-separated' });
    return z.NEVER;
  }
  return nodes;
});

/** 32 bytes in base64 (standard or URL-safe, padded or not): TOKEN_VALUE_KEY. */
const key32 = z.string().transform((text, ctx) => {
  const key = Buffer.from(text, 'base64');
  const canonical = (b64: string) => b64.replace(/=+$/, '').replaceAll('+', '-').replaceAll('/', '_');
  if (key.length !== 32 || canonical(key.toString('base64')) !== canonical(text)) {
    ctx.issues.push({ code: 'custom', input: text, message: 'must be 32 random bytes in base64 (openssl rand -base64 32)' });
    return z.NEVER;
  }
  return key;
});

/** WEBHOOK_RETRY_SCHEDULE_MS: whole milliseconds, comma-separated; null if it is not that. */
function parseRetrySchedule(value: string): number[] | null {
  const parts = value.split(',').map((p) => p.trim());
  if (parts.some((p) => !/^[0-9]{1,10}$/.test(p))) return null;
  const delays = parts.map(Number);
  return delays.every((d) => d <= MAX_MS) ? delays : null;
}

/** Whether every key that starts with `prefix` hashes to one Redis Cluster slot: a nonempty {tag}. */
const isHashTag = (prefix: string): boolean => /\{[^{}]+\}/.test(prefix);

export const envSchema = z
  .object({
    NODE_ENV: z.string().default('development'),
    ROLE: z.enum(['all', 'api', 'worker']).default('all'),
    PORT: whole(4000, 0, 65535),
    HOST: z.string().min(1).default('0.0.0.0'),
    DATABASE_URL: z
      .url({ protocol: /^postgres(ql)?$/ })
      .default('postgres://postgres@127.0.0.1:5432/token_lease'),
    DATABASE_POOL_MAX: whole(10, 1, 1000),
    DATABASE_STATEMENT_TIMEOUT_MS: milliseconds(5_000, 100),
    DATABASE_CONNECT_TIMEOUT_MS: milliseconds(5_000, 100),
    DATABASE_IDLE_TIMEOUT_MS: milliseconds(600_000, 0),
    REDIS_URL: z.url({ protocol: /^rediss?$/ }).default('redis://127.0.0.1:6379'),
    REDIS_PREFIX: z
      .string()
      // At most one hash tag, so that on a Redis Cluster every key the service writes hashes to
      // the tag's slot (Redis hashes only the part between the first { and the } after it).
      .regex(/^[A-Za-z0-9_.-]*(\{[A-Za-z0-9_.-]+\})?[A-Za-z0-9_.-]*$/, 'letters, digits, _ . -, and at most one hash tag such as {token-lease}')
      .min(1)
      .default('token-lease'),
    REDIS_CLUSTER_NODES: clusterNodes.optional(),
    POOL_SIZE: whole(100, 1, 10_000_000),
    LEASE_TTL_MS: milliseconds(120_000, 100),
    SWEEP_INTERVAL_MS: milliseconds(30_000, 10),
    API_PROCESSES: z
      .union([z.literal('auto'), digits(1, 256)], { error: 'must be a whole number from 1 to 256, or auto' })
      .default(1)
      .transform((n) => (n === 'auto' ? availableParallelism() : n)),
    MAINTENANCE_INTERVAL_MS: milliseconds(60_000, 10),
    VACUUM_DEAD_ROWS: whole(10_000, 1, 1_000_000_000),
    // Days, with decimals: 0.01 is 14.4 minutes (a soak shows the history levelling off).
    HISTORY_RETENTION_DAYS: z
      .string()
      .regex(/^[0-9]+(\.[0-9]+)?$/, 'must be a number of days, in digits (decimals allowed)')
      .transform(Number)
      .pipe(z.number().min(0).max(36_500))
      .default(90),
    RELEASE_CONCURRENCY: whole(4, 1, 1000),
    RELEASE_JOB_BATCH_MS: milliseconds(50, 0, 1_000),
    RELEASE_JOB_LOCK_MS: milliseconds(30_000, 1_000, 600_000),
    MAX_LEASE_MS: digits(100, MAX_MS).optional(),
    POOL_FULL_POLICY: z.enum(['reject', 'evict_oldest']).default('reject'),
    MAX_WAITERS: whole(1000, 0, 100_000),
    LIST_CACHE_MAX_AGE_MS: milliseconds(250, 0, 60_000),
    STATS_FLUSH_MS: milliseconds(10_000, 10, 60_000),
    MAX_STREAMS: whole(1000, 0, 100_000),
    WEBHOOK_RETRY_SCHEDULE_MS: z
      .string()
      .transform((value, ctx) => {
        const delays = parseRetrySchedule(value);
        if (delays === null) {
          ctx.issues.push({ code: 'custom', input: value, message: 'must be whole numbers of milliseconds, comma-separated' });
          return z.NEVER;
        }
        return delays;
      })
      .default([0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000]),
    WEBHOOK_ROTATION_GRACE_MS: milliseconds(86_400_000, 0),
    WEBHOOK_ALLOW_PRIVATE: z.enum(['true', 'false'], { error: 'must be true or false' }).default('false'),
    WEBHOOK_CONCURRENCY: whole(16, 1, 1000),
    QUEUE_BOARD_WRITE: z.enum(['true', 'false'], { error: 'must be true or false' }).default('false'),
    HTTP_FAST_LANE: z.enum(['true', 'false'], { error: 'must be true or false' }).default('true'),
    ADMIN_API_KEY: z
      .string()
      .min(16, 'must be at least 16 characters')
      // What a client can send in a Bearer credential: no spaces, nothing outside ASCII.
      .regex(/^[\x21-\x7e]+$/, 'must be visible ASCII characters, without spaces')
      // Nor the form of the credentials the modes check, so that a credential their verifier has
      // accepted is never the admin key (src/http/authenticate.ts looks those up first).
      .refine(
        (key) => key.split('.').length !== 3 && !key.startsWith(API_KEY_PREFIX),
        "must not have the form of a JWT (three parts separated by dots) or of an API client's key (tlk_...)",
      )
      .optional(),
    AUTH_MODE: z.enum(['none', 'jwt', 'api_key']).optional(),
    TOKEN_VALUE_KEY: key32.optional(),
    JWT_SECRET: z
      .string()
      .refine((s) => Buffer.byteLength(s, 'utf8') >= 32, 'must be at least 32 bytes')
      .optional(),
    JWT_PUBLIC_KEY: z.string().includes('-----BEGIN PUBLIC KEY-----', { error: 'must be a PEM public key' }).optional(),
    JWT_JWKS_FILE: z.string().min(1).optional(),
    JWT_ISSUER: z.string().min(1).optional(),
    JWT_AUDIENCE: z.string().min(1).optional(),
    CORS_ORIGINS: z
      .string()
      .transform((s) => s.split(',').map((o) => o.trim()).filter(Boolean))
      .pipe(z.array(z.url({ error: 'must be origins such as https://app.example.com, comma-separated' })))
      .default([]),
    TRUST_PROXY: whole(0, 0, 10),
    RATE_LIMIT_PER_MINUTE: whole(0, 0, 1_000_000_000),
    ADMIN_RATE_LIMIT_PER_MINUTE: whole(0, 0, 1_000_000_000),
    ADMIN_KEY_GUESSES_PER_MINUTE: whole(20, 0, 1_000_000),
    LOG_LEVEL: z
      .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
      .default('info'),
    SHUTDOWN_TIMEOUT_MS: milliseconds(10_000, 100),
  })
  .refine((e) => e.MAX_LEASE_MS === undefined || e.MAX_LEASE_MS >= e.LEASE_TTL_MS, {
    path: ['MAX_LEASE_MS'],
    message: 'must be at least LEASE_TTL_MS',
  })
  .refine((e) => e.REDIS_CLUSTER_NODES === undefined || isHashTag(e.REDIS_PREFIX), {
    path: ['REDIS_PREFIX'],
    message:
      'must be a hash tag such as {token-lease} when REDIS_CLUSTER_NODES is set: BullMQ needs every key of a queue in one hash slot',
  })
  .refine((e) => e.NODE_ENV !== 'production' || e.ADMIN_API_KEY !== undefined, {
    path: ['ADMIN_API_KEY'],
    message: 'required when NODE_ENV=production (admin routes would be open to anyone)',
  })
  .refine((e) => e.NODE_ENV !== 'production' || e.AUTH_MODE !== undefined, {
    path: ['AUTH_MODE'],
    message:
      'must be set when NODE_ENV=production: none (anyone who can reach the service may end any lease), jwt or api_key',
  })
  .refine(
    (e) =>
      e.AUTH_MODE !== 'jwt' ||
      [e.JWT_SECRET, e.JWT_PUBLIC_KEY, e.JWT_JWKS_FILE].filter((k) => k !== undefined).length === 1,
    { path: ['AUTH_MODE'], message: 'jwt needs exactly one of JWT_SECRET, JWT_PUBLIC_KEY and JWT_JWKS_FILE' },
  )
  .transform((e) => ({
    nodeEnv: e.NODE_ENV,
    role: e.ROLE,
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    databasePoolMax: e.DATABASE_POOL_MAX,
    databaseStatementTimeoutMs: e.DATABASE_STATEMENT_TIMEOUT_MS,
    databaseConnectTimeoutMs: e.DATABASE_CONNECT_TIMEOUT_MS,
    databaseIdleTimeoutMs: e.DATABASE_IDLE_TIMEOUT_MS,
    redisUrl: e.REDIS_URL,
    redisPrefix: e.REDIS_PREFIX,
    /** Null: one Redis at redisUrl. Else a Redis Cluster reached through these nodes. */
    redisClusterNodes: e.REDIS_CLUSTER_NODES ?? null,
    poolSize: e.POOL_SIZE,
    leaseTtlMs: e.LEASE_TTL_MS,
    sweepIntervalMs: e.SWEEP_INTERVAL_MS,
    apiProcesses: e.ROLE === 'worker' ? 1 : e.API_PROCESSES,
    maintenanceIntervalMs: e.MAINTENANCE_INTERVAL_MS,
    vacuumDeadRows: e.VACUUM_DEAD_ROWS,
    historyRetentionDays: e.HISTORY_RETENTION_DAYS,
    releaseConcurrency: e.RELEASE_CONCURRENCY,
    releaseJobBatchMs: e.RELEASE_JOB_BATCH_MS,
    releaseJobLockMs: e.RELEASE_JOB_LOCK_MS,
    maxLeaseMs: e.MAX_LEASE_MS ?? null,
    poolFullPolicy: e.POOL_FULL_POLICY,
    maxWaiters: e.MAX_WAITERS,
    listCacheMaxAgeMs: e.LIST_CACHE_MAX_AGE_MS,
    statsFlushMs: e.STATS_FLUSH_MS,
    maxStreams: e.MAX_STREAMS,
    webhooks: {
      retryScheduleMs: e.WEBHOOK_RETRY_SCHEDULE_MS,
      rotationGraceMs: e.WEBHOOK_ROTATION_GRACE_MS,
      allowPrivate: e.WEBHOOK_ALLOW_PRIVATE === 'true',
      concurrency: e.WEBHOOK_CONCURRENCY,
    },
    adminApiKey: e.ADMIN_API_KEY,
    /** The queue board (/admin/queues) may retry, clean, pause... jobs; else it only shows them. */
    queueBoardWrite: e.QUEUE_BOARD_WRITE === 'true',
    fastLane: e.HTTP_FAST_LANE === 'true',
    authMode: e.AUTH_MODE ?? 'none',
    /** Seals tokens' values at rest (AES-256-GCM); null: they are stored in clear. */
    tokenValueKey: e.TOKEN_VALUE_KEY ?? null,
    jwt: {
      secret: e.JWT_SECRET,
      publicKey: e.JWT_PUBLIC_KEY,
      jwksFile: e.JWT_JWKS_FILE,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
    },
    corsOrigins: e.CORS_ORIGINS,
    trustProxy: e.TRUST_PROXY,
    rateLimitPerMinute: e.RATE_LIMIT_PER_MINUTE,
    adminRateLimitPerMinute: e.ADMIN_RATE_LIMIT_PER_MINUTE,
    adminKeyGuessesPerMinute: e.ADMIN_KEY_GUESSES_PER_MINUTE,
    logLevel: e.LOG_LEVEL,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
  }));

/** The variables the service reads (docker-compose.yml and .env.example may set only these). */
export const envVariableNames = Object.keys(envSchema.in.shape);

export type Config = Readonly<z.output<typeof envSchema>>;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/**
 * Reads the environment once; throws a ConfigError naming every bad variable. An empty value
 * counts as unset (`MAX_LEASE_MS=` in an env file), never as 0 or as an empty name.
 */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = envSchema.safeParse(Object.fromEntries(Object.entries(env).filter(([, value]) => value !== '')));
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`),
    );
  }
  return Object.freeze(parsed.data);
}
