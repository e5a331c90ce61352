// The one gate for text that came from outside (a sink's response body, an exception
// message, a hostname) on its way into a text column. PostgreSQL rejects U+0000 in text
// (SQLSTATE 22021/22P05) and invalid UTF-8; one such value fails a whole batched
// statement, so every writer passes its text through here first.

/** Longest text stored in last_error, in characters (after escaping). */
export const MAX_ERROR_CHARS = 4000;

const ELLIPSIS = '…';

/**
 * C0 controls except tab and newline, DEL, and C1 controls. NUL is the one PostgreSQL
 * refuses; the others are kept out because they corrupt terminals and log lines when an
 * operator reads last_error.
 */
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

function escapeControl(ch: string): string {
  return `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

/**
 * Text safe to store: lone surrogates (what invalid UTF-8 or a broken \uD800 escape
 * becomes in a JS string) replaced by U+FFFD, control characters written as visible
 * \uXXXX escapes (nothing silently vanishes from an error message), and at most
 * `maxChars` characters, cut on a code point boundary with a trailing ellipsis.
 */
export function safeText(value: string, maxChars: number = MAX_ERROR_CHARS): string {
  let text = value.toWellFormed().replace(CONTROL, escapeControl);
  if (text.length > maxChars) {
    let cut = Math.max(0, maxChars - ELLIPSIS.length);
    // Never split a surrogate pair (the half left behind would be a lone surrogate).
    const code = text.charCodeAt(cut - 1);
    if (code >= 0xd800 && code <= 0xdbff) cut--;
    text = text.slice(0, cut) + ELLIPSIS;
  }
  return text;
}

/** safeText for nullable columns. */
export function safeTextOrNull(value: string | null | undefined, maxChars: number = MAX_ERROR_CHARS): string | null {
  return value === null || value === undefined ? null : safeText(value, maxChars);
}
