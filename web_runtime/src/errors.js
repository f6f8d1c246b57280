// Errors of the ClearCut runtime: one class with a stable `code` (the ErrorCode union of clearcut.d.ts), and
// the conversions that keep every rejection a ClearCutError, whatever threw underneath.

/** @typedef {import('./clearcut').ErrorCode} ErrorCode */

/** Error with a stable `code` so callers can branch without parsing messages. */
export class ClearCutError extends Error {
  /** @param {ErrorCode} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = 'ClearCutError';
    this.code = code;
  }
}

/** A DOMException from an AbortSignal that fired without a reason of the caller's own (`abort()`). */
export const isAbort = (err) => err?.name === 'AbortError';

/** @param {string} what e.g. 'The cut', 'Model loading' */
export const aborted = (what) => new ClearCutError('aborted', `${what} was aborted.`);

/**
 * What the worker sends back for any error: a ClearCutError keeps its code; an abort is `aborted`; anything
 * else (a bug, an onnxruntime failure we did not foresee) is `internal` with its own message.
 * @param {any} err @returns {{code: ErrorCode, message: string}}
 */
export function toWire(err) {
  if (err instanceof ClearCutError) return { code: err.code, message: err.message };
  if (isAbort(err)) return { code: 'aborted', message: err.message || 'The operation was aborted.' };
  return { code: 'internal', message: err?.message || String(err) };
}
