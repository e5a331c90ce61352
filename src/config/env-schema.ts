import { z } from 'zod';

// Helpers that turn one environment string into a typed value with a message that
// says what is allowed. Empty strings count as "not set".

export function intVar(defaultValue: number, min: number, max: number) {
  return z
    .string()
    .optional()
    .transform((raw, ctx) => {
      const value = raw?.trim();
      if (value === undefined || value === '') return defaultValue;
      if (!/^-?\d+$/.test(value)) {
        ctx.addIssue({ code: 'custom', message: `must be a whole number between ${min} and ${max} (got ${JSON.stringify(raw)})` });
        return z.NEVER;
      }
      const n = Number(value);
      if (n < min || n > max) {
        ctx.addIssue({ code: 'custom', message: `must be between ${min} and ${max} (got ${n})` });
        return z.NEVER;
      }
      return n;
    });
}

export function boolVar(defaultValue: boolean) {
  return z
    .string()
    .optional()
    .transform((raw, ctx) => {
      const value = raw?.trim().toLowerCase();
      if (value === undefined || value === '') return defaultValue;
      if (['1', 'true', 'yes', 'on'].includes(value)) return true;
      if (['0', 'false', 'no', 'off'].includes(value)) return false;
      ctx.addIssue({ code: 'custom', message: `must be true or false (got ${JSON.stringify(raw)})` });
      return z.NEVER;
    });
}

export function enumVar<const T extends readonly [string, ...string[]]>(values: T, defaultValue: T[number]) {
  return z
    .string()
    .optional()
    .transform((raw, ctx): T[number] => {
      const value = raw?.trim();
      if (value === undefined || value === '') return defaultValue;
      if ((values as readonly string[]).includes(value)) return value as T[number];
      ctx.addIssue({ code: 'custom', message: `must be one of ${values.join(', ')} (got ${JSON.stringify(raw)})` });
      return z.NEVER;
    });
}

export function stringVar() {
  return z
    .string()
    .optional()
    .transform((raw) => {
      const value = raw?.trim();
      return value === undefined || value === '' ? undefined : value;
    });
}

export function postgresUrlVar() {
  return stringVar().superRefine((value, ctx) => {
    if (value === undefined) return;
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'must be a postgres:// connection URL' });
      return;
    }
    if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
      ctx.addIssue({ code: 'custom', message: `must use the postgres:// scheme (got ${url.protocol})` });
    }
  });
}
