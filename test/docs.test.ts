import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The documentation in layers: a short README that links into docs/, one topic a file. A link
// that leads nowhere is a bug a reader finds first, so every relative link is checked here.

const root = fileURLToPath(new URL('../', import.meta.url));
const README_MAX_BYTES = 10 * 1024;
const TOPICS = ['api.md', 'configuration.md', 'design.md', 'operations.md', 'scaling.md', 'testing.md', 'performance.md', 'dashboard.md'];

const docsDir = join(root, 'docs');
const documents = [
  join(root, 'README.md'),
  ...readdirSync(docsDir)
    .filter((name) => name.endsWith('.md'))
    .map((name) => join(docsDir, name)),
];

/** Markdown without fenced code blocks and inline code, where brackets are not links. */
function prose(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '').replace(/`[^`\n]*`/g, '');
}

/** The targets of inline links and images, and of reference definitions. */
function linkTargets(markdown: string): string[] {
  const text = prose(markdown);
  const inline = [...text.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1] ?? '');
  const references = [...text.matchAll(/^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)/gm)].map((m) => m[1] ?? '');
  return [...inline, ...references];
}

/** A heading's anchor as GitHub makes it: the text without markup, lower case, punctuation dropped. */
function anchorOf(heading: string): string {
  return heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/`/g, '')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-');
}

/** Every anchor a Markdown file offers; a repeated heading gets -1, -2, ... as on GitHub. */
function anchorsIn(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  const withoutCode = markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
  for (const match of withoutCode.matchAll(/^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = anchorOf(match[1] ?? '');
    const count = seen.get(base) ?? 0;
    seen.set(base, count + 1);
    anchors.add(count === 0 ? base : `${base}-${count}`);
  }
  return anchors;
}

/** What is wrong with `target`, linked from `file`, or null when it resolves. */
function brokenLink(file: string, target: string): string | null {
  // Absolute URLs (https:, mailto:) are not this repository's to check.
  if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('//')) return null;
  const [path = '', anchor] = target.split('#', 2);
  const resolved = path === '' ? file : join(dirname(file), decodeURIComponent(path));
  if (!existsSync(resolved)) return 'no such file';
  if (anchor === undefined || anchor === '') return null;
  if (statSync(resolved).isDirectory() || !resolved.endsWith('.md')) return 'an anchor into a file without headings';
  return anchorsIn(readFileSync(resolved, 'utf8')).has(decodeURIComponent(anchor)) ? null : 'no such heading';
}

describe('the documentation', () => {
  it('keeps README.md within 10 KB (10,240 bytes)', () => {
    expect(statSync(join(root, 'README.md')).size).toBeLessThanOrEqual(README_MAX_BYTES);
  });

  it('has one file per topic in docs/', () => {
    expect(readdirSync(docsDir)).toEqual(expect.arrayContaining(TOPICS));
  });

  it('names every test file in the table of docs/testing.md', () => {
    const table = readFileSync(join(docsDir, 'testing.md'), 'utf8');
    const files = readdirSync(join(root, 'test')).filter((name) => name.endsWith('.test.ts'));
    expect(files.length).toBeGreaterThan(20);
    expect(files.map((name) => name.replace(/\.test\.ts$/, '')).filter((name) => !table.includes(`\`${name}\``))).toEqual([]);
  });

  it('links from README.md into every topic in docs/', () => {
    const linked = new Set(linkTargets(readFileSync(join(root, 'README.md'), 'utf8')).map((t) => t.split('#')[0]));
    expect(TOPICS.filter((topic) => !linked.has(`docs/${topic}`))).toEqual([]);
  });

  it('has no relative link in README.md or docs/*.md that leads nowhere', () => {
    const broken: string[] = [];
    let checked = 0;
    for (const file of documents) {
      for (const target of linkTargets(readFileSync(file, 'utf8'))) {
        checked += 1;
        const problem = brokenLink(file, target);
        if (problem !== null) broken.push(`${relative(root, file)}: ${target}: ${problem}`);
      }
    }
    expect(broken).toEqual([]);
    expect(checked).toBeGreaterThan(TOPICS.length);
  });

  it('derives anchors from headings as GitHub does', () => {
    expect(anchorOf('`POST /api/tokens/clear` (admin)')).toBe('post-apitokensclear-admin');
    expect(anchorOf('`GET /api/tokens/:id/history`')).toBe('get-apitokensidhistory');
    expect(anchorOf('Health, metrics and the OpenAPI document')).toBe('health-metrics-and-the-openapi-document');
    expect(anchorOf('The load generator: wrk or autocannon')).toBe('the-load-generator-wrk-or-autocannon');
    expect(anchorOf('Expiry: lazy, a job, and a sweep')).toBe('expiry-lazy-a-job-and-a-sweep');
    expect([...anchorsIn('# A\n\n## A\n\n```\n# not a heading\n```\n')]).toEqual(['a', 'a-1']);
  });
});
