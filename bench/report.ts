import { EXPIRY_MAX_LATENESS_MS, SCENARIOS, type ScenarioKey, type ScenarioSpec } from './scenarios.js';
import type { Measurement } from './run.js';
import { median } from './stats.js';

// One table from the measurements: per scenario the median over rounds, the spread between
// rounds (how noisy the machine was), latencies, and the ratio to its baseline from the same run.

export interface Row {
  readonly key: ScenarioKey;
  readonly label: string;
  readonly value: number;
  readonly unit: ScenarioSpec['unit'];
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  readonly maxMs: number | undefined;
  /** (max - min) / median of the rounds' figures. */
  readonly spread: number | undefined;
  /** CPU time of the process under test per operation (median over rounds). */
  readonly cpuMsPerOp: number | undefined;
  /** CPU time of the PostgreSQL server per operation (median over rounds). */
  readonly dbCpuMsPerOp: number | undefined;
  readonly errors: number;
  readonly ratio: number | undefined;
  readonly ratioText: string | undefined;
  readonly targetText: string | undefined;
  readonly met: boolean | undefined;
}

export interface Sizes {
  readonly largePool: number;
  readonly expiryLeases: number;
  readonly expiryTtlMs: number;
  readonly subscribers: number;
}

const MB = 1024 * 1024;

export function summarise(measurements: readonly Measurement[], sizes: Sizes): Row[] {
  const byKey = new Map<ScenarioKey, Measurement[]>();
  for (const m of measurements) byKey.set(m.key, [...(byKey.get(m.key) ?? []), m]);
  const values = new Map<ScenarioKey, number>();
  for (const [key, ms] of byKey) values.set(key, median(ms.map((m) => m.value)));

  const rows: Row[] = [];
  for (const spec of SCENARIOS) {
    const ms = byKey.get(spec.key);
    if (ms === undefined) continue;
    const figures = ms.map((m) => m.value);
    const value = median(figures);
    const spreadOf = (xs: number[]) => (xs.length > 1 && value > 0 ? (Math.max(...xs) - Math.min(...xs)) / value : undefined);
    const optional = (pick: (m: Measurement) => number | undefined) => {
      const xs = ms.map(pick).filter((x): x is number => x !== undefined);
      return xs.length === 0 ? undefined : xs;
    };
    const cpus = optional((m) => m.cpuMsPerOp);
    const dbCpus = optional((m) => m.dbCpuMsPerOp);
    const p50s = optional((m) => m.p50Ms);
    const p99s = optional((m) => m.p99Ms);
    const maxes = optional((m) => m.maxMs);
    // Lateness and latency are worst cases: the worst round counts. Rates: the median round.
    const worst = spec.unit === 'ms';
    const p99Ms = p99s === undefined ? undefined : worst ? Math.max(...p99s) : median(p99s);
    const maxMs = maxes === undefined ? undefined : Math.max(...maxes);
    const errors = ms.reduce((sum, m) => sum + m.errors, 0);

    const versus = spec.target?.baseline ?? spec.compareWith;
    const ratio = versus === undefined ? undefined : ratioTo(ms, byKey.get(versus) ?? [], values.get(versus));
    const baseLabel = versus === undefined ? '' : shortName(versus);
    let met: boolean | undefined;
    const target = spec.target;
    if (target !== undefined) {
      if (target.baseline !== undefined) {
        met = ratio === undefined ? undefined : ratio >= (target.min ?? 0);
      } else if (spec.key === 'expiry') {
        met = (p99Ms ?? Infinity) <= (target.max ?? Infinity) && (maxMs ?? Infinity) <= EXPIRY_MAX_LATENESS_MS;
      } else if (spec.unit === 'ms') {
        met = (p99Ms ?? Infinity) <= (target.max ?? Infinity);
      } else {
        met = value / MB <= (target.max ?? Infinity);
      }
      if (met === true && errors > 0) met = false;
    }
    rows.push({
      key: spec.key,
      label: spec.label(sizes),
      value: spec.unit === 'MB' ? value / MB : value,
      unit: spec.unit,
      p50Ms: p50s === undefined ? undefined : median(p50s),
      p99Ms,
      maxMs,
      spread: spreadOf(figures),
      cpuMsPerOp: cpus === undefined ? undefined : median(cpus),
      dbCpuMsPerOp: dbCpus === undefined ? undefined : median(dbCpus),
      errors,
      ratio,
      ratioText: ratio === undefined ? undefined : `${ratio.toFixed(2)} x ${baseLabel}`,
      targetText: target?.text,
      met,
    });
  }
  return rows;
}

/**
 * The median of the per-run ratios: each run against its own baseline figure (`versus`, the mean
 * of the baseline's runs on either side of it) where the bench measured one, else against the
 * first baseline run of its round. A noisy moment that hits one run (both sides of it, or only
 * one) moves one ratio, not the result. Without common rounds, the ratio of the medians.
 */
function ratioTo(ms: readonly Measurement[], baseline: readonly Measurement[], baseMedian: number | undefined) {
  const paired = ms.flatMap((m) => (m.versus === undefined || m.versus === 0 ? [] : [m.value / m.versus]));
  if (paired.length > 0) return median(paired);
  const perRound = ms.flatMap((m) => {
    const base = baseline.find((b) => b.round === m.round)?.value;
    return base === undefined || base === 0 ? [] : [m.value / base];
  });
  if (perRound.length > 0) return median(perRound);
  return baseMedian === undefined || baseMedian === 0 ? undefined : median(ms.map((m) => m.value)) / baseMedian;
}

function shortName(key: ScenarioKey): string {
  switch (key) {
    case 'sql-cycle':
      return 'raw SQL';
    case 'http-cycle':
      return 'HTTP cycle';
    case 'bare-express':
      return 'Express';
    default:
      return key;
  }
}

const ms = (x: number | undefined) => (x === undefined ? '' : x < 10 ? `${x.toFixed(1)} ms` : `${Math.round(x)} ms`);

function figure(row: Row): string {
  switch (row.unit) {
    case 'MB':
      return `${Math.round(row.value)} MB`;
    case 'ms':
      return `max ${ms(row.maxMs)}`;
    default:
      return `${Math.round(row.value).toLocaleString('en-US')} ${row.unit}`;
  }
}

/** A Markdown table: readable in a terminal, pasted as is into docs/performance.md. */
export function formatTable(rows: readonly Row[]): string {
  const header = ['scenario', 'result', 'p50', 'p99', 'CPU/op', 'PG CPU/op', 'vs baseline', 'target', 'met', 'spread', 'errors'];
  const cpu = (x: number | undefined) => (x === undefined ? '' : `${x.toFixed(2)} ms`);
  const lines = rows.map((row) => [
    row.label,
    figure(row),
    ms(row.p50Ms),
    ms(row.p99Ms),
    cpu(row.cpuMsPerOp),
    cpu(row.dbCpuMsPerOp),
    row.ratioText ?? '',
    row.targetText ?? '',
    row.met === undefined ? '' : row.met ? 'yes' : '**no**',
    row.spread === undefined ? '' : `±${Math.round((row.spread * 100) / 2)}%`,
    String(row.errors),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? '').length)));
  const format = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [format(header), format(widths.map((w) => '-'.repeat(w))), ...lines.map(format)].join('\n');
}

export function verdict(rows: readonly Row[]): string {
  const judged = rows.filter((r) => r.met !== undefined);
  const missed = judged.filter((r) => r.met === false).map((r) => r.label);
  return missed.length === 0
    ? `targets met: ${judged.length} of ${judged.length}`
    : `targets met: ${judged.length - missed.length} of ${judged.length}; missed: ${missed.join('; ')}`;
}
