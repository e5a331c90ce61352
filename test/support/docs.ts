import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DOCS = ['README.md', ...fs.readdirSync(path.join(ROOT, 'runbooks')).sort().map((f) => `runbooks/${f}`)];
export const readDoc = (doc: string) => fs.readFileSync(path.join(ROOT, doc), 'utf8');

/** `npm run cli -- …` / `outbox-dispatcher …` as the docs write them (monitoring.test.ts checks the flags). */
export const COMMAND_RE =
  /(?:npm run cli --|(?<![\w/-])outbox-dispatcher) ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)((?: +(?:--[a-z-]+|'[^']*'|"[^"]*"|<[^>]+>|[^\s`|;#)]+))*)/g;

export interface DocCommand {
  doc: string;
  /** The command as written, without the environment assignments before it. */
  text: string;
  /** Words naming the command (e.g. ["events", "stats"]) followed by its arguments, unquoted. */
  argv: string[];
  /** VAR=value assignments written before the command on the same line. */
  env: Record<string, string>;
}

/** Splits shell words the way sh would for the docs' commands: '…', "…", and <placeholders> with spaces. */
export function shellWords(text: string): string[] {
  const words: string[] = [];
  for (const m of text.matchAll(/'([^']*)'|"([^"]*)"|(<[^>]+>)|(\S+)/g)) words.push(m[1] ?? m[2] ?? m[3] ?? m[4]!);
  return words;
}

export function docCommands(): DocCommand[] {
  const out: DocCommand[] = [];
  for (const doc of DOCS) {
    for (const line of readDoc(doc).split('\n')) {
      for (const m of line.matchAll(COMMAND_RE)) {
        const before = line.slice(0, m.index);
        const env: Record<string, string> = {};
        const assigns = /((?:[A-Z_]+=\S+ +)+)(?:npx +)?$/.exec(before);
        if (assigns) for (const a of assigns[1]!.trim().split(/ +/)) env[a.slice(0, a.indexOf('='))] = a.slice(a.indexOf('=') + 1);
        const words = m[1]!.split(' ');
        out.push({ doc, text: m[0].trim(), argv: [...words, ...shellWords(m[2]!)], env });
      }
    }
  }
  return out;
}

export interface SqlSnippet {
  doc: string;
  sql: string;
}

/** Fenced ```sql blocks and inline `…;` statements of the docs. */
export function sqlSnippets(): SqlSnippet[] {
  const out: SqlSnippet[] = [];
  for (const doc of DOCS) {
    const text = readDoc(doc);
    for (const m of text.matchAll(/```sql\n([\s\S]*?)```/g)) out.push({ doc, sql: m[1]!.trim() });
    const prose = text.replace(/```[\s\S]*?```/g, '');
    for (const m of prose.matchAll(/`((?:SELECT|INSERT|UPDATE|DELETE|VACUUM|ALTER|GRANT|CREATE|DROP|BEGIN)\b[^`]*;)`/g)) out.push({ doc, sql: m[1]! });
  }
  return out;
}
