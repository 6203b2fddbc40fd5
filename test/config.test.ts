import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { ConfigError, envVariableNames, loadConfig } from '../src/config.js';

const read = (path: string) => readFileSync(new URL(`../${path}`, import.meta.url), 'utf8');

describe('configuration', () => {
  it('has the documented defaults', () => {
    expect(loadConfig({})).toMatchObject({
      role: 'all',
      port: 4000,
      databaseUrl: 'postgres://postgres@127.0.0.1:5432/token_lease',
      redisUrl: 'redis://127.0.0.1:6379',
      poolSize: 100,
      leaseTtlMs: 120_000,
      sweepIntervalMs: 30_000,
      adminApiKey: undefined,
      logLevel: 'info',
    });
  });

  it('is frozen', () => {
    expect(Object.isFrozen(loadConfig({}))).toBe(true);
  });

  it('names every bad variable at once', () => {
    const attempt = () =>
      loadConfig({ PORT: 'eighty', POOL_SIZE: '0', LEASE_TTL_MS: '1.5', ROLE: 'boss', DATABASE_URL: 'mysql://x' });
    expect(attempt).toThrow(ConfigError);
    try {
      attempt();
    } catch (error) {
      const names = (error as ConfigError).problems.map((p) => p.split(':')[0]);
      expect(names).toEqual(
        expect.arrayContaining(['PORT', 'POOL_SIZE', 'LEASE_TTL_MS', 'ROLE', 'DATABASE_URL']),
      );
    }
  });

  it('treats an empty ADMIN_API_KEY as unset and refuses a short one', () => {
    expect(loadConfig({ ADMIN_API_KEY: '' }).adminApiKey).toBeUndefined();
    expect(() => loadConfig({ ADMIN_API_KEY: 'short' })).toThrow(/ADMIN_API_KEY/);
  });

  it('refuses an ADMIN_API_KEY no Bearer credential can carry', () => {
    for (const key of ['has spaces in it, 16+', 'ключ-ключ-ключ-ключ']) {
      expect(() => loadConfig({ ADMIN_API_KEY: key })).toThrow(/ADMIN_API_KEY: must be visible ASCII/);
    }
  });

  it("refuses an ADMIN_API_KEY with the form of a JWT or of an API client's key", () => {
    for (const key of ['header.payload.signature', 'tlk_' + 'k'.repeat(43)]) {
      expect(() => loadConfig({ ADMIN_API_KEY: key })).toThrow(/ADMIN_API_KEY: must not have the form of a JWT/);
    }
    for (const key of ['one.dot-only-here-16', 'many.dots.in.this.key']) expect(loadConfig({ ADMIN_API_KEY: key }).adminApiKey).toBe(key);
  });

  it('treats any empty value as unset, never as 0', () => {
    const empty = Object.fromEntries(envVariableNames.map((name) => [name, '']));
    expect(loadConfig(empty)).toEqual(loadConfig({}));
  });

  it.each([
    ['PORT', '1e3'],
    ['POOL_SIZE', '0x10'],
    ['MAX_WAITERS', ' 5'],
    ['SWEEP_INTERVAL_MS', '99999999999'],
    ['SHUTDOWN_TIMEOUT_MS', '2147483648'],
    ['DATABASE_STATEMENT_TIMEOUT_MS', '-1'],
  ])('refuses %s=%s: numbers are whole, in digits, and timers within what Node.js keeps', (name, value) => {
    expect(() => loadConfig({ [name]: value })).toThrow(new RegExp(`${name}:`));
  });

  it('takes a REDIS_PREFIX with one hash tag, for a Redis Cluster, and refuses other braces', () => {
    expect(loadConfig({ REDIS_PREFIX: '{token-lease}' }).redisPrefix).toBe('{token-lease}');
    expect(loadConfig({ REDIS_PREFIX: 'eu-{token-lease}' }).redisPrefix).toBe('eu-{token-lease}');
    for (const prefix of ['{}', '{a}{b}', '{a', 'a}', 'a:b', '{a b}']) {
      expect(() => loadConfig({ REDIS_PREFIX: prefix }), prefix).toThrow(/REDIS_PREFIX:/);
    }
  });

  it('reads REDIS_CLUSTER_NODES as host:port, comma-separated, and refuses anything else', () => {
    expect(loadConfig({}).redisClusterNodes).toBeNull();
    expect(
      loadConfig({ REDIS_CLUSTER_NODES: 'redis-1:7000, 10.0.0.2:7001,[::1]:7002', REDIS_PREFIX: '{tl}' }).redisClusterNodes,
    ).toEqual([
      { host: 'redis-1', port: 7000 },
      { host: '10.0.0.2', port: 7001 },
      { host: '::1', port: 7002 },
    ]);
    for (const nodes of ['redis-1', 'redis-1:0', 'redis-1:65536', 'redis://redis-1:7000', ',', 'a:1;b:2']) {
      expect(() => loadConfig({ REDIS_CLUSTER_NODES: nodes, REDIS_PREFIX: '{tl}' }), nodes).toThrow(
        /REDIS_CLUSTER_NODES: must be host:port, comma-separated/,
      );
    }
  });

  it('refuses REDIS_CLUSTER_NODES with a REDIS_PREFIX that is not a hash tag, naming REDIS_PREFIX', () => {
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: 'redis-1:7000' })).toThrow(
      /REDIS_PREFIX: must be a hash tag such as \{token-lease\} when REDIS_CLUSTER_NODES is set/,
    );
    expect(loadConfig({ REDIS_CLUSTER_NODES: 'redis-1:7000', REDIS_PREFIX: '{token-lease}' }).redisPrefix).toBe('{token-lease}');
  });

  it('refuses NODE_ENV=production without ADMIN_API_KEY, or without AUTH_MODE set explicitly', () => {
    expect(() => loadConfig({ NODE_ENV: 'production', AUTH_MODE: 'none' })).toThrow(/ADMIN_API_KEY/);
    expect(() => loadConfig({ NODE_ENV: 'production', ADMIN_API_KEY: 'k'.repeat(16) })).toThrow(/AUTH_MODE/);
    for (const mode of ['none', 'jwt']) {
      const jwt = mode === 'jwt' ? { JWT_SECRET: 's'.repeat(32) } : {};
      expect(loadConfig({ NODE_ENV: 'production', ADMIN_API_KEY: 'k'.repeat(16), AUTH_MODE: mode, ...jwt }).authMode).toBe(mode);
    }
  });

  it('refuses AUTH_MODE=jwt without exactly one key, and a secret under 32 bytes', () => {
    expect(() => loadConfig({ AUTH_MODE: 'jwt' })).toThrow(/exactly one of JWT_SECRET/);
    expect(() => loadConfig({ AUTH_MODE: 'jwt', JWT_SECRET: 's'.repeat(32), JWT_JWKS_FILE: 'keys.json' })).toThrow(/exactly one/);
    expect(() => loadConfig({ AUTH_MODE: 'jwt', JWT_SECRET: 'é'.repeat(15) })).toThrow(/JWT_SECRET: must be at least 32 bytes/);
    expect(() => loadConfig({ AUTH_MODE: 'jwt', JWT_SECRET: 'é'.repeat(16) })).not.toThrow();
  });
});

describe('the documents that list the configuration', () => {
  it('.env.example lists every variable the service reads, and only those', () => {
    const listed = read('.env.example')
      .split('\n')
      .filter((line) => /^[A-Z_]+=/.test(line))
      .map((line) => line.split('=')[0]);
    expect([...listed].sort()).toEqual([...envVariableNames].sort());
  });

  it('.env.example shows the defaults the code uses', () => {
    const env = Object.fromEntries(
      read('.env.example')
        .split('\n')
        .filter((line) => /^[A-Z_]+=/.test(line))
        .map((line) => line.split('=') as [string, string]),
    );
    expect(loadConfig(env)).toEqual(loadConfig({}));
  });

  it('the configuration table in docs/configuration.md lists every variable', () => {
    const rows = [...read('docs/configuration.md').matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect([...new Set(rows)].sort()).toEqual([...envVariableNames].sort());
  });
});

describe('docker-compose.yml', () => {
  const compose = parseYaml(read('docker-compose.yml'), { merge: true }) as {
    services: Record<string, Record<string, any>>;
  };
  const ours = Object.entries(compose.services).filter(([, s]) => s.build !== undefined);

  it('runs the API and the worker as separate services built from the Dockerfile', () => {
    const roles = ours.map(([, service]) => (service.environment as Record<string, string>).ROLE);
    expect(roles.sort()).toEqual(['api', 'worker']);
  });

  it('sets only variables the configuration schema knows', () => {
    for (const [name, service] of ours) {
      const keys = Object.keys(service.environment ?? {});
      expect(keys.filter((k) => !envVariableNames.includes(k)), name).toEqual([]);
    }
  });

  it('waits for healthy PostgreSQL and Redis', () => {
    for (const [name, service] of ours) {
      expect(service.depends_on, name).toMatchObject({
        postgres: { condition: 'service_healthy' },
        redis: { condition: 'service_healthy' },
      });
    }
    expect(compose.services.postgres?.healthcheck).toBeDefined();
    expect(compose.services.redis?.healthcheck).toBeDefined();
  });

  it('runs Redis with AOF persistence and noeviction, as BullMQ needs', () => {
    const command = (compose.services.redis?.command as string[]).join(' ');
    expect(command).toMatch(/--appendonly yes/);
    expect(command).toMatch(/--maxmemory-policy noeviction/);
  });

  it('points the service at the compose PostgreSQL and Redis with valid values', () => {
    for (const [, service] of ours) {
      const env = interpolate(service.environment as Record<string, string>);
      expect(env.DATABASE_URL).toMatch(/@postgres:5432\//);
      expect(env.REDIS_URL).toBe('redis://redis:6379');
      expect(() => loadConfig(env)).not.toThrow();
    }
  });
});

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile');

  it('is multi-stage, runs as a non-root user and has a HEALTHCHECK', () => {
    expect(dockerfile.match(/^FROM /gm)?.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/^HEALTHCHECK /m);
    expect(dockerfile).toMatch(/npm prune --omit=dev/);
  });

  it('ships the migrations beside the compiled code', () => {
    expect(dockerfile).toMatch(/COPY .*migrations \.\/migrations/);
    expect(dockerfile).toMatch(/CMD \["node", "dist\/main\/index\.js"\]/);
  });
});

// Compose's ${VAR:-default} takes the default; ${VAR:?message} (required) takes a valid stand-in.
function interpolate(env: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(env).map(([key, value]) => [
      key,
      value
        .replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1')
        // What an operator must set (compose refuses to start without it), as they would.
        .replace(/\$\{([A-Z_]+):\?[^}]*\}/g, (_, name: string) => (name === 'AUTH_MODE' ? 'none' : 'k'.repeat(16))),
    ]),
  );
}
