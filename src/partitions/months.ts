// Calendar arithmetic for monthly partitions, always in UTC.

/** First instant of the UTC month containing `d`. */
export function startOfMonthUtc(d: Date): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
}

export function addMonthsUtc(month: Date, n: number): Date {
  return new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + n, 1));
}

/** YYYY-MM-DD of a month start, as the SQL primitives take it. */
export function isoDate(d: Date): string {
  return d.toISOString().slice(0, 10);
}
