import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// The layer rule of docs/architecture.md (ADR 0015): a folder under src/ may import only
// folders on a lower layer. Same-layer folders are independent of each other, so folders
// can never import each other in a circle. src/main.ts is the top (the composition root's
// entry point); everything else sits in a folder.
const LAYERS: readonly (readonly string[])[] = [
  ['kernel'], // Service contract, sleep/jitter, heartbeat, exit codes, logger, version, heap growth
  ['domain'], // the event, outcomes and dead reasons, dispatch errors, event-type pattern, text hygiene
  ['config'],
  ['db'], // pool, migrator, preflight, and db/queries: every SQL statement
  ['tenancy', 'tracing', 'embedded', 'metrics'],
  ['sinks', 'partitions', 'listener', 'incidents'],
  ['dispatch'],
  ['lifecycle'], // the daemon: composes the services, their start and stop order
  ['cli'],
  ['.'], // src/main.ts
];

const SRC = path.resolve(import.meta.dirname, '../src');

function rankOf(folder: string): number {
  const rank = LAYERS.findIndex((layer) => layer.includes(folder));
  if (rank < 0) throw new Error(`src/${folder} is in no layer: add it to LAYERS in test/layers.test.ts and to docs/architecture.md`);
  return rank;
}

/** Top-level folder under src/ ('.' for files directly in src/). */
function folderOf(file: string): string {
  const rel = path.relative(SRC, file);
  return rel.includes(path.sep) ? rel.split(path.sep)[0]! : '.';
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Relative specifiers of static imports, re-exports and dynamic imports. */
export function relativeImports(source: string): string[] {
  const specs: string[] = [];
  for (const m of source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm)) specs.push(m[1]!);
  return specs;
}

interface Edge {
  from: string;
  to: string;
  file: string;
  target: string;
}

function folderEdges(): Edge[] {
  const edges: Edge[] = [];
  for (const file of sourceFiles(SRC)) {
    for (const spec of relativeImports(fs.readFileSync(file, 'utf8'))) {
      const target = path.resolve(path.dirname(file), spec);
      const from = folderOf(file);
      const to = folderOf(target);
      if (from !== to) edges.push({ from, to, file: path.relative(SRC, file), target: path.relative(SRC, target) });
    }
  }
  return edges;
}

/** Folder cycles, each as the list of folders in one strongly connected component (Tarjan). */
function cycles(edges: Edge[]): string[][] {
  const next = new Map<string, Set<string>>();
  for (const e of edges) (next.get(e.from) ?? next.set(e.from, new Set()).get(e.from)!).add(e.to);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const v of next.keys()) if (!index.has(v)) visit(v);
  return found;
}

describe('layers', () => {
  const edges = folderEdges();

  it('sees the imports (the parser is not silently matching nothing)', () => {
    expect(edges.some((e) => e.file === 'lifecycle/daemon.ts' && e.target === 'dispatch/dispatcher.ts')).toBe(true);
    expect(relativeImports(`import type { A } from '../a.ts';\nexport { b } from "./b.ts";\nconst c = await import('../c/c.ts');\nimport './side.ts';`)).toEqual([
      '../a.ts',
      './b.ts',
      '../c/c.ts',
      './side.ts',
    ]);
  });

  it('places every folder under src/ in a layer', () => {
    const folders = new Set(sourceFiles(SRC).map(folderOf));
    for (const folder of folders) expect(() => rankOf(folder)).not.toThrow();
  });

  it('never lets a folder import one on its own or a higher layer', () => {
    const upward = edges
      .filter((e) => rankOf(e.to) >= rankOf(e.from))
      .map((e) => `src/${e.file} (${e.from}) imports src/${e.target} (${e.to}, ${rankOf(e.to) === rankOf(e.from) ? 'same layer' : 'higher layer'})`);
    expect(upward).toEqual([]);
  });

  it('has no import cycle between folders', () => {
    expect(cycles(edges)).toEqual([]);
    // The detector itself finds a circle when there is one.
    expect(cycles([{ from: 'a', to: 'b', file: '', target: '' }, { from: 'b', to: 'a', file: '', target: '' }])).toEqual([['a', 'b']]);
  });
});
