import { describe, expect, it } from 'vitest';
import { buildPhpQuery } from './php-query.js';

describe('buildPhpQuery', () => {
  it('encodes nested objects and arrays in bracket notation', () => {
    const q = buildPhpQuery({
      fields: { TITLE: 'Order & co', PHONE: [{ VALUE: '+79161234567', VALUE_TYPE: 'WORK' }] },
      params: { REGISTER_SONET_EVENT: 'Y' },
    });
    expect(decodeURIComponent(q)).toBe(
      'fields[TITLE]=Order & co&fields[PHONE][0][VALUE]=+79161234567&fields[PHONE][0][VALUE_TYPE]=WORK&params[REGISTER_SONET_EVENT]=Y',
    );
    expect(q).toContain('fields%5BTITLE%5D=Order%20%26%20co');
    expect(q).toContain('%2B79161234567');
  });

  it('drops null / undefined, writes booleans as 1 / 0, keeps filter prefixes', () => {
    const q = buildPhpQuery({ filter: { '@ORIGIN_ID': ['1', '2'], ACTIVE: true, X: false, Y: null }, z: undefined });
    expect(decodeURIComponent(q)).toBe('filter[@ORIGIN_ID][0]=1&filter[@ORIGIN_ID][1]=2&filter[ACTIVE]=1&filter[X]=0');
  });

  it('escapes characters that would break a batch command', () => {
    const q = buildPhpQuery({ fields: { COMMENTS: "a=b&c?d#e'(f)*" } });
    expect(q).not.toMatch(/[?#'()*]/);
    expect(q.split('&')).toHaveLength(1);
  });
});
