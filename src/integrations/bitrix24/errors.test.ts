import { describe, expect, it } from 'vitest';
import { classifyBitrixError, normaliseCode } from './errors.js';

describe('classifyBitrixError', () => {
  it.each([
    ['expired_token', 401, 'auth'],
    ['invalid_token', 401, 'auth'],
    ['invalid_grant', 400, 'auth'],
    ['NO_AUTH_FOUND', 401, 'auth'],
    ['INVALID_CREDENTIALS', 401, 'auth'],
    ['insufficient_scope', 401, 'auth'],
    ['ACCESS_DENIED', 401, 'auth'],
    ['PAYMENT_REQUIRED', 402, 'auth'],
    ['user_access_error', 401, 'auth'],
    ['QUERY_LIMIT_EXCEEDED', 503, 'rate'],
    ['OPERATION_TIME_LIMIT', 429, 'rate'],
    ['INTERNAL_SERVER_ERROR', 500, 'unavailable'],
    ['ERROR_UNEXPECTED_ANSWER', 500, 'unavailable'],
    ['SOMETHING_NEW', 502, 'unavailable'],
    ['SOMETHING_NEW', 403, 'auth'],
    ['ERROR_BATCH_LENGTH_EXCEEDED', 400, 'bad_request'],
    ['', 400, 'bad_request'],
  ] as const)('%s (HTTP %s) -> %s', (code, status, kind) => {
    expect(classifyBitrixError(code, status)).toBe(kind);
  });

  it('reads "Access denied." with an empty code as a permission problem', () => {
    expect(classifyBitrixError('', 400, 'Access denied.')).toBe('auth');
    expect(normaliseCode('', 'Access denied.')).toBe('ACCESS_DENIED');
    expect(normaliseCode('', 'Title is required')).toBe('UNKNOWN');
  });
});
