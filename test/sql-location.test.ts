import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// README "Layout": every SQL statement lives in migrations/ or src/db/queries/. A heuristic
// keeps it so: outside src/db no file runs a statement (pg's .query(), Kysely's sql`` or
// query builder) or holds a string that starts like one; in src/db outside queries/ (pool,
// migrator, preflight), code may run what queries/ or migrations/ hold but spells out none.

const SRC = path.resolve(import.meta.dirname, '../src');

const RUNS_SQL: readonly [string, RegExp][] = [
  ['pg query', /\.query\s*(<[^>]*>)?\s*\(/],
  ['sql template', /\bsql\s*(<[^>]*>)?\s*`|\bsql\.(raw|ref|id|lit|table|join)\s*\(/],
  ['query builder', /\.(selectFrom|insertInto|updateTable|deleteFrom|replaceInto|mergeInto)\s*\(/],
];
const STARTS_LIKE_SQL = /(['"`])\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+[\w."]+\s+SET\s|DELETE\s+FROM\s|CREATE\s+(OR\s+REPLACE\s+)?[A-Z]+\s|ALTER\s+[A-Z]+\s|DROP\s+[A-Z]+\s|TRUNCATE\s|LOCK\s+TABLE\s|GRANT\s|REVOKE\s|BEGIN\1|COMMIT\1|ROLLBACK\1|SET\s+(LOCAL\s+)?(ROLE|SESSION)\s|WITH\s+\w+\s+AS\s*\()/;

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Source without comments (a comment may quote SQL). */
function code(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
}

export function sqlFindings(source: string, opts: { mayRun?: boolean } = {}): string[] {
  const found: string[] = [];
  code(source)
    .split('\n')
    .forEach((line, i) => {
      if (!opts.mayRun) for (const [what, re] of RUNS_SQL) if (re.test(line)) found.push(`${i + 1}: ${what}: ${line.trim()}`);
      if (STARTS_LIKE_SQL.test(line)) found.push(`${i + 1}: SQL text: ${line.trim()}`);
    });
  return found;
}

/** SQL the code prints for an operator to run, never runs itself: file and the line's text. */
const ADVICE: readonly [string, RegExp][] = [['db/login-role.ts', /`GRANT \$\{BACKGROUND_ROLE\} TO \$\{login\} WITH INHERIT TRUE` : `ALTER ROLE/]];
const advice = (file: string, finding: string) => ADVICE.some(([f, re]) => f === file && re.test(finding));

const rel = (f: string) => path.relative(SRC, f).split(path.sep).join('/');

describe('where SQL lives', () => {
  it('the heuristic sees statements (and not prose or comments)', () => {
    expect(sqlFindings("await client.query('SELECT 1');")).toHaveLength(2);
    expect(sqlFindings('await sql`SELECT now()`.execute(db);')).toHaveLength(2);
    expect(sqlFindings("db.selectFrom('capacity_outbox').selectAll().execute();")).toHaveLength(1);
    expect(sqlFindings("const s = `INSERT INTO capacity_outbox (id) VALUES ($1)`;")).toHaveLength(1);
    expect(sqlFindings("await c.query('BEGIN');")).toHaveLength(2);
    expect(sqlFindings("log.warn('LISTEN connection lost; reconnecting');")).toEqual([]);
    expect(sqlFindings("out.say('undo: as the owner: DELETE FROM capacity_outbox WHERE ...');")).toEqual([]);
    expect(sqlFindings('// SELECT * FROM capacity_outbox\n/* UPDATE t SET a = 1 */')).toEqual([]);
  });

  it('outside src/db, no file runs or spells out a statement', () => {
    const findings = sourceFiles(SRC)
      .filter((f) => !rel(f).startsWith('db/'))
      .flatMap((f) => sqlFindings(fs.readFileSync(f, 'utf8')).map((x) => `src/${rel(f)}:${x}`));
    expect(findings).toEqual([]);
  });

  it('in src/db, statements are spelled out only in queries/', () => {
    const findings = sourceFiles(SRC)
      .filter((f) => rel(f).startsWith('db/') && !rel(f).startsWith('db/queries/'))
      .flatMap((f) => sqlFindings(fs.readFileSync(f, 'utf8'), { mayRun: true }).filter((x) => !advice(rel(f), x)).map((x) => `src/${rel(f)}:${x}`));
    expect(findings).toEqual([]);
  });
});
